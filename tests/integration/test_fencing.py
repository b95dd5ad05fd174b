"""Fencing: a stale run of a task never stands for a newer one, even in the same worker.

The interleaving the lease tests did not reach (they always stop the stale worker's
consumer first): attempt 1 loses its lease while it still runs, and the same worker,
still consuming, claims attempt 2. When attempt 1 ends, attempt 2 must stay the
worker's run, heartbeaten and waited for, and finish the task.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text, update

from krolik.registry import Registry
from krolik.states import TaskStatus
from krolik.store.records import NewTask, RunRef
from krolik.store.tables import tasks
from tests.conftest import wait_for_task
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


async def test_a_stale_run_ending_does_not_take_the_next_run_with_it(
    store, make_settings, spawn_worker, relay, make_rescuer
):
    first_may_end, second_may_end = asyncio.Event(), asyncio.Event()
    runs: list[int] = []
    registry = Registry()

    @registry.task(name="fence.twice", max_attempts=5)
    async def twice(payload: Any, context: Any) -> str:
        runs.append(context.attempt)
        if context.attempt == 1:
            try:
                await first_may_end.wait()
            except asyncio.CancelledError:
                await first_may_end.wait()  # it takes its time to stop
                raise
            return "first"
        await second_may_end.wait()
        return "second"

    lease = make_settings(worker={"lease_seconds": 1.5, "heartbeat_seconds": 0.2})
    worker = await spawn_worker(registry, worker_settings=lease, concurrency=2)
    rescuer = make_rescuer(lease)
    [enqueued] = await store.enqueue([NewTask(name="fence.twice", queue="default", payload=1)])
    task_id = enqueued.task.id
    relay.wake()
    await wait_until(lambda: runs == [1], what="attempt 1 runs")

    # Attempt 1's lease runs out (as if its heartbeats had not got through): the rescuer
    # takes it back, and the same worker claims attempt 2 while attempt 1 still runs.
    async with store.engine.begin() as conn:
        await conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(lease_expires_at=text("now() - interval '1 second'"))
        )
    await rescuer.wait_tick()
    await wait_until(lambda: runs == [1, 2], what="attempt 2 runs in the same worker")
    first_may_end.set()  # attempt 1 is over now (told its lease is lost, or at last)
    await wait_until(lambda: len(worker.runs) == 1, what="only attempt 2 is left")

    # Attempt 2 outlives several leases: it must still be heartbeaten.
    await asyncio.sleep(4)
    running = await store.get(task_id)
    assert running.status is TaskStatus.PROCESSING, running
    assert running.attempts == 2, "attempt 2 was never taken away"
    second_may_end.set()
    done = await wait_for_task(store, task_id, TaskStatus.DONE)
    assert (done.result, done.attempts) == ("second", 2)
    assert runs == [1, 2]
    await worker.wait_for_idle()


async def test_a_released_and_reclaimed_run_is_not_the_old_one(store):
    """Release gives the attempt back, so the next claim by the same worker has the same
    attempt number: only the fencing token tells the two runs apart."""
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=1)])
    task_id = enqueued.task.id
    first = await store.claim(task_id, "worker-a", 30, {"echo": 3})
    old = RunRef.of(first)
    assert await store.release(old) is TaskStatus.PENDING
    again = await store.claim(task_id, "worker-a", 30, {"echo": 3})
    new = RunRef.of(again)
    assert (again.attempts, again.worker_id) == (first.attempts, first.worker_id)
    assert new.token > old.token
    assert not await store.complete(old, "stale"), "the released run finished the new one"
    assert await store.heartbeat([old], 30) == {}
    assert await store.complete(new, "fresh")
    assert (await store.get(task_id)).result == "fresh"
