"""default priorities

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 18:30:00.000000

* ``krolik_queues.default_priority``: the priority of a queue's new tasks that give none.
* ``krolik_handlers``: what a handler's code declares for its new tasks (its priority),
  written by the workers that have it, read by the statement that inserts a task.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("krolik_queues", sa.Column("default_priority", sa.Integer(), nullable=True))
    op.create_table(
        "krolik_handlers",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_krolik_handlers")),
    )


def downgrade() -> None:
    op.drop_table("krolik_handlers")
    with op.batch_alter_table("krolik_queues") as batch:
        batch.drop_column("default_priority")
