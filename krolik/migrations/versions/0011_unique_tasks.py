"""unique tasks

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 13:00:00.000000

``krolik_tasks.unique_key`` (unique per task name where set), ``unique_until`` and
``unique_running``: a unique task holds its key while pending, while running if asked,
and until ``unique_until``; a submit of the key meanwhile gets the holder back.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOLDING = "unique_key IS NOT NULL"


def upgrade() -> None:
    # Plain ADD COLUMN, on SQLite too: a batch rebuild of the table would drop its
    # webhook trigger with the old table.
    op.add_column("krolik_tasks", sa.Column("unique_key", sa.Text(), nullable=True))
    op.add_column(
        "krolik_tasks", sa.Column("unique_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "krolik_tasks",
        sa.Column("unique_running", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_index(
        "ix_krolik_tasks_name_unique_key",
        "krolik_tasks",
        ["name", "unique_key"],
        unique=True,
        postgresql_where=sa.text(HOLDING),
        sqlite_where=sa.text(HOLDING),
    )


def downgrade() -> None:
    op.drop_index("ix_krolik_tasks_name_unique_key", table_name="krolik_tasks")
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.drop_column("unique_running")
        batch.drop_column("unique_until")
        batch.drop_column("unique_key")
