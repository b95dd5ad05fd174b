"""flow control

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 15:00:00.000000

* ``krolik_tasks.priority``, ``concurrency_key`` and ``held`` (why a pending task of a
  gated queue waits), with an index of held tasks by queue and priority, one of the
  pending tasks above priority 0 and one of running tasks by queue and key.
* ``krolik_queues``: each queue's pause and limits, as data.
* ``krolik_queue_starts``: the recent starts of a rate-limited queue, per slice of
  its window.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
HELD = "status = 'pending' AND held IS NOT NULL"
PROCESSING = "status = 'processing'"
RANKED = "status = 'pending' AND priority > 0"


def upgrade() -> None:
    # Plain ADD COLUMN, on SQLite too: a batch rebuild of the table would drop its
    # webhook trigger with the old table.
    op.add_column(
        "krolik_tasks",
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("krolik_tasks", sa.Column("concurrency_key", sa.Text(), nullable=True))
    op.add_column("krolik_tasks", sa.Column("held", sa.Text(), nullable=True))
    op.create_index(
        "ix_krolik_tasks_held",
        "krolik_tasks",
        ["queue", "priority", "run_at", "id"],
        postgresql_where=sa.text(HELD),
        sqlite_where=sa.text(HELD),
    )
    op.create_index(
        "ix_krolik_tasks_pending_priority",
        "krolik_tasks",
        ["queue", "priority"],
        postgresql_where=sa.text(RANKED),
        sqlite_where=sa.text(RANKED),
    )
    op.create_index(
        "ix_krolik_tasks_processing_queue_key",
        "krolik_tasks",
        ["queue", "concurrency_key"],
        postgresql_where=sa.text(PROCESSING),
        sqlite_where=sa.text(PROCESSING),
    )
    op.create_table(
        "krolik_queues",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("max_running_per_key", sa.Integer(), nullable=True),
        sa.Column("rate_limit", sa.Text(), nullable=True),
        sa.Column("declared", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "max_running IS NULL OR max_running >= 0", name=op.f("ck_krolik_queues_max_running")
        ),
        sa.CheckConstraint(
            "max_running_per_key IS NULL OR max_running_per_key >= 1",
            name=op.f("ck_krolik_queues_max_running_per_key"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_krolik_queues")),
    )
    op.create_table(
        "krolik_queue_starts",
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("slice_at", Timestamp, nullable=False),
        sa.Column("starts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["queue"],
            ["krolik_queues.name"],
            name=op.f("fk_krolik_queue_starts_queue_krolik_queues"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("queue", "slice_at", name=op.f("pk_krolik_queue_starts")),
    )


def downgrade() -> None:
    op.drop_table("krolik_queue_starts")
    op.drop_table("krolik_queues")
    op.drop_index("ix_krolik_tasks_processing_queue_key", table_name="krolik_tasks")
    op.drop_index("ix_krolik_tasks_pending_priority", table_name="krolik_tasks")
    op.drop_index("ix_krolik_tasks_held", table_name="krolik_tasks")
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.drop_column("held")
        batch.drop_column("concurrency_key")
        batch.drop_column("priority")
