"""PostgreSQL says at commit which task ended (NOTIFY from the trigger krolik_tasks_ended):
a waiter in an API process hears of it without the worker's notice through RabbitMQ."""

from __future__ import annotations

import asyncio

import pytest

from krolik.broker.memory import MemoryBroker
from krolik.results.watch import TaskWatch
from krolik.settings import ResultsSettings
from krolik.states import TaskStatus
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import NewTask, RunRef
from tests.conftest import BEHIND_PGBOUNCER

pytestmark = pytest.mark.integration


@pytest.mark.skipif(BEHIND_PGBOUNCER, reason="no LISTEN through PgBouncer's transaction mode")
async def test_a_waiter_hears_of_an_end_from_postgresql_itself(store: PostgresTaskStore) -> None:
    # The broker carries no notice of the worker's (there is no worker), and the periodic
    # re-read is a minute away: only the database's own word can end the wait in time.
    await store.open()
    watch = TaskWatch(store, MemoryBroker(), ResultsSettings(recheck_seconds=60))
    await watch.start()
    try:
        [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=1)])
        claimed = await store.claim(enqueued.task.id, "worker-a", 30, {"echo": 3})
        assert claimed is not None
        waiting = asyncio.create_task(watch.wait_final(claimed.id, 30))
        while not watch.watched:
            await asyncio.sleep(0.01)
        assert await store.complete(RunRef.of(claimed), "ok")
        task = await asyncio.wait_for(waiting, 5)
        assert task is not None
        assert task.status is TaskStatus.DONE
    finally:
        await watch.stop()


async def test_behind_pgbouncer_the_store_offers_no_listen(store: PostgresTaskStore) -> None:
    behind = PostgresTaskStore(store.engine, pgbouncer=True)
    assert await behind.listen_ended(lambda _id: None, lambda: None) is None
