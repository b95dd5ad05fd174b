"""The relay's side of the outbox: give rows back. Claiming and deleting them, twice a
second per relay, are the stores' own statements."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update

from krolik.store.sql.core import SqlCore
from krolik.store.tables import outbox


class OutboxStatements(SqlCore):
    async def release_outbox(self, entry_ids: Sequence[int]) -> None:
        if not entry_ids:
            return
        async with self._tx() as conn:
            await conn.execute(
                update(outbox).where(outbox.c.id.in_(list(entry_ids))).values(claimed_until=None)
            )
