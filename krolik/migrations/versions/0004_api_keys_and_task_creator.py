"""api keys and task creator

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 00:37:41.409037
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "krolik_api_keys",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "scope IN ('read', 'submit', 'admin')", name=op.f("ck_krolik_api_keys_scope")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_krolik_api_keys")),
    )
    op.create_index("ix_krolik_api_keys_key_hash", "krolik_api_keys", ["key_hash"], unique=True)
    op.create_index("ix_krolik_api_keys_name", "krolik_api_keys", ["name"], unique=True)
    op.add_column("krolik_tasks", sa.Column("created_by", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("krolik_tasks", "created_by")
    op.drop_index("ix_krolik_api_keys_name", table_name="krolik_api_keys")
    op.drop_index("ix_krolik_api_keys_key_hash", table_name="krolik_api_keys")
    op.drop_table("krolik_api_keys")
