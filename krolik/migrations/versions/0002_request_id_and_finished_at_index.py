"""request id and finished_at index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:29:39.009966
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("krolik_tasks", sa.Column("request_id", sa.Text(), nullable=True))
    op.create_index("ix_krolik_tasks_finished_at", "krolik_tasks", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_krolik_tasks_finished_at", table_name="krolik_tasks")
    op.drop_column("krolik_tasks", "request_id")
