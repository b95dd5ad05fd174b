"""sqlite: outbox ids are never reused

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 01:10:00.000000

SQLite gives a new row the highest id plus one, so once the newest outbox rows are
deleted (as every published row is) their ids come back; ``AUTOINCREMENT`` stops
that. SQLite cannot change this in place, so the table is rebuilt (batch mode).
PostgreSQL's identity column never reuses ids: nothing to do there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild_outbox(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "krolik_outbox", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    _rebuild_outbox(True)


def downgrade() -> None:
    _rebuild_outbox(False)
