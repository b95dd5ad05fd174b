"""attempts and progress

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:00:00.000000

* ``krolik_attempts``: one row per ended run (attempt number, worker, times, outcome,
  error and traceback), written with the transition that ends the run. Runs that ended
  before the upgrade have none; the task keeps its last error as before.
* ``krolik_tasks.progress``: what the running handler last reported of itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JsonValue = sa.JSON().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OUTCOMES = "'succeeded', 'failed', 'retried', 'cancelled', 'released', 'lost'"


def upgrade() -> None:
    op.add_column("krolik_tasks", sa.Column("progress", JsonValue, nullable=True))
    op.create_table(
        "krolik_attempts",
        sa.Column("id", Id, sa.Identity(always=False), nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("run_token", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"outcome IN ({OUTCOMES})", name=op.f("ck_krolik_attempts_outcome")),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["krolik_tasks.id"],
            name=op.f("fk_krolik_attempts_task_id_krolik_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_krolik_attempts")),
    )
    op.create_index(
        "ix_krolik_attempts_task_id_run_token", "krolik_attempts", ["task_id", "run_token"]
    )


def downgrade() -> None:
    op.drop_index("ix_krolik_attempts_task_id_run_token", table_name="krolik_attempts")
    op.drop_table("krolik_attempts")
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.drop_column("progress")
