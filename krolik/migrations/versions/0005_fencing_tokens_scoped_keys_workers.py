"""fencing tokens, idempotency keys per caller, the workers table

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:30:00.000000

* ``run_token``: a per-task counter every claim increments and nothing lowers (the
  fencing token of a run). Rows that exist start at 0; a task running during the
  upgrade keeps 0 until its next claim, and its worker (an older version) guards by
  attempt and worker as before.
* Idempotency keys become unique per caller (``idempotency_scope``: the API key's name,
  or '' without authentication) and remember a fingerprint of their request
  (``request_hash``; NULL for keys stored before, which match any body).
* ``krolik_workers``: live worker processes, what they serve, until when they count as
  alive.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JsonValue = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.add_column(sa.Column("idempotency_scope", sa.Text(), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("run_token", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
    op.execute(
        "UPDATE krolik_tasks SET idempotency_scope = coalesce(created_by, '') "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.drop_index("ix_krolik_tasks_idempotency_key", table_name="krolik_tasks")
    op.create_index(
        "ix_krolik_tasks_idempotency_scope_idempotency_key",
        "krolik_tasks",
        ["idempotency_scope", "idempotency_key"],
        unique=True,
    )
    op.create_table(
        "krolik_workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", JsonValue, nullable=False),
        sa.Column("handlers", JsonValue, nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_krolik_workers")),
    )


def downgrade() -> None:
    op.drop_table("krolik_workers")
    op.drop_index("ix_krolik_tasks_idempotency_scope_idempotency_key", table_name="krolik_tasks")
    # Keys of different callers may collide once unscoped: keep the oldest task's key.
    op.execute(
        "UPDATE krolik_tasks SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL "
        "AND id NOT IN (SELECT min(id) FROM krolik_tasks WHERE idempotency_key IS NOT NULL "
        "GROUP BY idempotency_key)"
    )
    op.create_index(
        "ix_krolik_tasks_idempotency_key", "krolik_tasks", ["idempotency_key"], unique=True
    )
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.drop_column("run_token")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_scope")
