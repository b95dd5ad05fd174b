"""PostgreSQL says at commit which task ended (NOTIFY from the trigger krolik_tasks_ended):
a waiter in an API process hears of it without the worker's notice through RabbitMQ."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest

from krolik.broker.memory import MemoryBroker
from krolik.results.watch import TaskWatch
from krolik.settings import ResultsSettings
from krolik.states import TaskStatus
from krolik.store.postgres import APPLICATION_NAME, PostgresTaskStore
from krolik.store.records import NewTask, RunRef, Task
from tests.conftest import BEHIND_PGBOUNCER, PG_HOST, PG_PORT, PG_USER

pytestmark = pytest.mark.integration
SECOND = timedelta(seconds=1)


async def running_task(store: PostgresTaskStore) -> Task:
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=1)])
    claimed = await store.claim(enqueued.task.id, "worker-a", 30, {"echo": 3})
    assert claimed is not None
    return claimed


async def waiting_for(watch: TaskWatch, task: Task) -> asyncio.Task[Task | None]:
    """A waiter of the task, registered with the watch."""
    waiting = asyncio.create_task(watch.wait_final(task.id, 30))
    while not watch.watched:
        await asyncio.sleep(0.01)
    return waiting


@pytest.mark.skipif(BEHIND_PGBOUNCER, reason="no LISTEN through PgBouncer's transaction mode")
async def test_a_waiter_hears_of_an_end_from_postgresql_itself(store: PostgresTaskStore) -> None:
    # The broker carries no notice of the worker's (there is no worker), and the periodic
    # re-read is a minute away: only the database's own word can end the wait in time.
    await store.open()
    watch = TaskWatch(store, MemoryBroker(), ResultsSettings(recheck_seconds=60))
    await watch.start()
    try:
        claimed = await running_task(store)
        waiting = await waiting_for(watch, claimed)
        assert await store.complete(RunRef.of(claimed), "ok")
        task = await asyncio.wait_for(waiting, 5)
        assert task is not None
        assert task.status is TaskStatus.DONE
    finally:
        await watch.stop()


@pytest.mark.skipif(BEHIND_PGBOUNCER, reason="no LISTEN through PgBouncer's transaction mode")
async def test_the_word_of_an_end_holds_the_record_as_the_store_reads_it(
    store: PostgresTaskStore,
) -> None:
    await store.open()
    heard: asyncio.Queue[tuple[int, Task | None]] = asyncio.Queue()
    close = await store.listen_ended(lambda *word: heard.put_nowait(word), lambda: None)
    assert close is not None
    try:
        small, big = await store.enqueue(
            [
                NewTask(name="echo", queue="default", payload={"n": 1.5}, timeout_seconds=30),
                NewTask(name="echo", queue="default", payload="x" * 10_000),
            ]
        )
        for enqueued, result in ((small, {"ok": [1, "two"]}), (big, None)):
            claimed = await store.claim(enqueued.task.id, "worker-a", 30, {"echo": 3})
            assert claimed is not None
            assert await store.complete(RunRef.of(claimed), result)
        task_id, record = await asyncio.wait_for(heard.get(), 5)
        assert task_id == small.task.id
        assert record == await store.get(small.task.id)  # every field, the same types
        # A record over a notice's limit (8,000 bytes) comes as its id: the waiter reads it.
        assert await asyncio.wait_for(heard.get(), 5) == (big.task.id, None)
    finally:
        await close()


@pytest.mark.skipif(BEHIND_PGBOUNCER, reason="no LISTEN through PgBouncer's transaction mode")
async def test_a_waiter_is_answered_from_the_word_alone(store: PostgresTaskStore) -> None:
    await store.open()
    watch = TaskWatch(store, MemoryBroker(), ResultsSettings(recheck_seconds=60))
    await watch.start()
    try:
        claimed = await running_task(store)
        waiting = await waiting_for(watch, claimed)
        reads = watch.reads
        assert await store.complete(RunRef.of(claimed), "ok")
        task = await asyncio.wait_for(waiting, 5)
        assert task is not None
        assert task.result == "ok"
        assert watch.reads == reads
    finally:
        await watch.stop()


async def test_an_older_record_than_the_last_read_wakes_nobody(store: PostgresTaskStore) -> None:
    # The word of an end may come after a read that found the task retried already.
    watch = TaskWatch(store, MemoryBroker(), ResultsSettings(recheck_seconds=60))
    claimed = await running_task(store)
    assert await store.complete(RunRef.of(claimed), "ok")
    ended = await store.get(claimed.id)
    assert ended is not None
    retried = replace(ended, status=TaskStatus.PENDING, updated_at=ended.updated_at + SECOND)
    with watch.watching(claimed.id) as watcher:
        watch.ended(claimed.id, retried)  # as a read would offer it
        assert await watcher.next(1) == retried
        watch.ended(claimed.id, ended)
        assert await watcher.next(0.2) is None


async def test_behind_pgbouncer_the_store_offers_no_listen(store: PostgresTaskStore) -> None:
    behind = PostgresTaskStore(store.engine, pgbouncer=True)
    assert await behind.listen_ended(lambda *_word: None, lambda: None) is None


@pytest.mark.skipif(BEHIND_PGBOUNCER, reason="no LISTEN through PgBouncer's transaction mode")
async def test_a_listen_cancelled_at_any_moment_leaves_no_connection_behind(
    store: PostgresTaskStore, pg_database: str
) -> None:
    """An API stopped while its watch starts listening (a quick test, a process told to
    stop at start-up) cancels ``listen_ended`` mid-way: the connection it had opened must
    be closed, not left to the garbage collector (asyncpg then warns of it, in whatever
    runs at that moment)."""
    probe = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=pg_database)
    count = (
        "SELECT count(*) FROM pg_stat_activity"
        f" WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}'"
    )
    try:
        before = await probe.fetchval(count)
        for step in range(60):
            listening = asyncio.create_task(store.listen_ended(lambda *_: None, lambda: None))
            await asyncio.sleep(step / 2000)  # 0 to 30 ms: before, in and after the connect
            listening.cancel()
            try:
                close = await listening
            except asyncio.CancelledError:
                continue
            if close is not None:
                await close()  # it finished first: closed the normal way
        deadline = asyncio.get_running_loop().time() + 5
        while (left := await probe.fetchval(count) - before) and (
            asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        assert left == 0, f"{left} connections of cancelled listens are still open"
    finally:
        await probe.close()
