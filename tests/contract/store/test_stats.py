"""Counts for operators; on both stores."""

from __future__ import annotations

from datetime import timedelta

from krolik.store.base import TaskStore
from tests.contract.store.support import (
    add,
    backdate,
    current,
    is_utc,
    take,
)


# -- operator views --------------------------------------------------------------------
async def test_queue_stats_count_each_queue(any_store: TaskStore) -> None:
    first = await add(any_store, queue="q1")
    await backdate(any_store, first.id, run_at=timedelta(minutes=5))
    await add(any_store, queue="q1")
    await add(any_store, queue="q1", delay_seconds=3600)
    running, stuck, done = [await add(any_store, queue="q2") for _ in range(3)]
    runs = [(await take(any_store, task))[1] for task in (running, stuck, done)]
    await backdate(any_store, stuck.id, started_at=timedelta(minutes=10))
    assert await any_store.complete(runs[2], None)
    failed = await add(any_store, queue="q3")
    assert await any_store.fail_unrunnable(failed.id, "no handler")

    stats = {item.queue: item for item in await any_store.queue_stats(60)}
    assert sorted(stats) == ["q1", "q2", "q3"]
    q1, q2, q3 = stats["q1"], stats["q2"], stats["q3"]
    assert (q1.pending, q1.scheduled, q1.processing, q1.stuck) == (2, 1, 0, 0)
    assert q1.oldest_pending_at == (await current(any_store, first.id)).run_at
    assert is_utc(q1.oldest_pending_at)
    assert (q2.pending, q2.scheduled, q2.processing, q2.stuck) == (0, 0, 2, 1)
    assert (q2.done_last_hour, q2.failed_last_hour, q2.cancelled_last_hour) == (1, 0, 0)
    assert q2.oldest_pending_at is None
    assert (q3.pending, q3.processing, q3.failed_last_hour) == (0, 0, 1)


async def test_outbox_stats_count_the_due_rows(any_store: TaskStore) -> None:
    empty = await any_store.outbox_stats()
    assert (empty.backlog, empty.oldest_due_at) == (0, None)
    first = await add(any_store)
    await add(any_store)
    await add(any_store, delay_seconds=3600)
    stats = await any_store.outbox_stats()
    assert stats.backlog == 2
    assert stats.oldest_due_at == first.run_at
    assert is_utc(stats.oldest_due_at)
