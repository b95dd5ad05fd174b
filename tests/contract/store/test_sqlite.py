"""What only the embedded store must get right: its clock and its one connection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import event, update

from krolik.store.records import RunRef
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import tasks
from tests.contract.store.support import (
    HANDLERS,
    LEASE,
    WORKER,
    add,
)


# -- times and transactions of the embedded store -----------------------------------------
async def test_a_lease_counts_from_when_the_claim_runs_not_from_when_it_waited(
    sqlite_store: SqlTaskStore,
) -> None:
    """SQLite has one connection: a claim may wait for it behind another transaction. Its
    lease is counted from the moment it runs, so the wait does not shorten it."""
    task = await add(sqlite_store)
    lease = 2.0
    async with sqlite_store.engine.begin() as conn:  # the store's one connection, held
        claiming = asyncio.create_task(sqlite_store.claim(task.id, WORKER, lease, HANDLERS))
        await asyncio.sleep(1.0)
        await conn.execute(update(tasks).where(tasks.c.id == -1).values(attempts=0))
    claimed = await claiming
    returned = datetime.now(UTC)
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    left = (claimed.lease_expires_at - returned).total_seconds()
    assert left > lease - 0.3, f"the lease has only {left:.2f} s left on return"


async def test_many_claims_and_completions_are_one_transaction_each(
    sqlite_store: SqlTaskStore,
) -> None:
    added = [await add(sqlite_store) for _ in range(5)]
    begun: list[object] = []

    def on_begin(connection: object) -> None:
        begun.append(connection)

    event.listen(sqlite_store.engine.sync_engine, "begin", on_begin)
    try:
        claimed = await sqlite_store.claim_many([t.id for t in added], WORKER, LEASE, HANDLERS)
        assert len(begun) == 1
        runs = [RunRef.of(task) for task in claimed if task is not None]
        assert await sqlite_store.complete_many([(run, 1) for run in runs]) == [True] * 5
        assert len(begun) == 2
    finally:
        event.remove(sqlite_store.engine.sync_engine, "begin", on_begin)
