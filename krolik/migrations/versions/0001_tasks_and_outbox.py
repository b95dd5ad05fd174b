"""tasks and outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-28 00:22:13.428329
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "krolik_tasks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column(
            "cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'done', 'failed', 'cancelled')",
            name=op.f("ck_krolik_tasks_status"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_krolik_tasks_attempts")),
        sa.CheckConstraint(
            "max_attempts IS NULL OR max_attempts >= 1", name=op.f("ck_krolik_tasks_max_attempts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_krolik_tasks")),
    )
    op.create_index(
        "ix_krolik_tasks_idempotency_key", "krolik_tasks", ["idempotency_key"], unique=True
    )
    op.create_index("ix_krolik_tasks_name_id", "krolik_tasks", ["name", "id"], unique=False)
    op.create_index(
        "ix_krolik_tasks_pending_run_at",
        "krolik_tasks",
        ["run_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_krolik_tasks_processing_lease",
        "krolik_tasks",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'processing'"),
        sqlite_where=sa.text("status = 'processing'"),
    )
    op.create_index(
        "ix_krolik_tasks_queue_status", "krolik_tasks", ["queue", "status"], unique=False
    )
    op.create_index("ix_krolik_tasks_status_id", "krolik_tasks", ["status", "id"], unique=False)
    op.create_table(
        "krolik_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["krolik_tasks.id"],
            name=op.f("fk_krolik_outbox_task_id_krolik_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_krolik_outbox")),
    )
    op.create_index(
        "ix_krolik_outbox_available_at", "krolik_outbox", ["available_at"], unique=False
    )
    op.create_index("ix_krolik_outbox_task_id", "krolik_outbox", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_krolik_outbox_task_id", table_name="krolik_outbox")
    op.drop_index("ix_krolik_outbox_available_at", table_name="krolik_outbox")
    op.drop_table("krolik_outbox")
    op.drop_index("ix_krolik_tasks_status_id", table_name="krolik_tasks")
    op.drop_index("ix_krolik_tasks_queue_status", table_name="krolik_tasks")
    op.drop_index(
        "ix_krolik_tasks_processing_lease",
        table_name="krolik_tasks",
        postgresql_where=sa.text("status = 'processing'"),
        sqlite_where=sa.text("status = 'processing'"),
    )
    op.drop_index(
        "ix_krolik_tasks_pending_run_at",
        table_name="krolik_tasks",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_krolik_tasks_name_id", table_name="krolik_tasks")
    op.drop_index("ix_krolik_tasks_idempotency_key", table_name="krolik_tasks")
    op.drop_table("krolik_tasks")
