"""Leases: a run whose worker stopped heartbeating is taken back by the rescuer and
finished elsewhere; the stale worker can no longer finish it; heartbeats keep a long
run alive; a worker that learns it lost a lease stops its handler."""

from __future__ import annotations

import asyncio

from krolik.registry import Registry
from krolik.states import TaskStatus
from krolik.store.records import NewTask, RunRef
from tests.conftest import wait_for_task
from tests.integration.conftest import outbox_count, stop_consuming

LEASE_ERROR = "lease expired: the worker stopped heartbeating"


def silent_settings(make_settings):
    """A short lease that the worker never renews: its heartbeat waits an hour."""
    return make_settings(worker={"lease_seconds": 0.5, "heartbeat_seconds": 3600})


async def test_an_expired_lease_goes_back_to_pending_and_another_worker_finishes_it(
    store, make_settings, spawn_worker, relay, make_rescuer
):
    first_started = asyncio.Event()
    let_first_finish = asyncio.Event()
    registry = Registry()

    @registry.task(name="lease.block", max_attempts=3)
    async def block(payload, context) -> str:
        if context.attempt == 1:
            first_started.set()
            await let_first_finish.wait()
            return "late"
        return "second"

    stale = await spawn_worker(registry, worker_settings=silent_settings(make_settings))
    [enqueued] = await store.enqueue([NewTask(name="lease.block", queue="default", payload=None)])
    task_id = enqueued.task.id
    relay.wake()
    await asyncio.wait_for(first_started.wait(), 5)
    await stop_consuming(stale)  # it keeps running attempt 1, but takes nothing new
    running = await store.get(task_id)
    assert running.status is TaskStatus.PROCESSING
    assert running.worker_id == stale.worker_id
    assert running.lease_expires_at is not None

    rescuer = make_rescuer()
    rescued = await wait_for_task(store, task_id, TaskStatus.PENDING, timeout=5)
    assert rescued.attempts == 1, "the lost run counts as an attempt"
    assert rescued.error == LEASE_ERROR
    assert rescued.worker_id is None
    assert rescued.lease_expires_at is None
    assert rescuer.rescued == 1

    other = await spawn_worker(registry)
    done = await wait_for_task(store, task_id, TaskStatus.DONE)
    assert done.result == "second"
    assert done.attempts == 2
    assert done.worker_id == other.worker_id
    assert done.error is None

    # The stale worker's handler ends now: its late result must change nothing.
    let_first_finish.set()
    await stale.wait_for_idle()
    assert stale.stats.succeeded == 0
    assert await store.get(task_id) == done
    stale_run = RunRef(task_id, running.run_token, 1, stale.worker_id)
    assert not await store.complete(stale_run, "late again")
    assert not await store.fail(stale_run, "late", None)
    assert await store.get(task_id) == done


async def test_an_expired_lease_with_no_attempts_left_fails_the_task(
    store, make_settings, spawn_worker, relay, make_rescuer
):
    started = asyncio.Event()
    let_it_finish = asyncio.Event()
    registry = Registry()

    @registry.task(name="lease.once", max_attempts=1)
    async def once(payload) -> str:
        started.set()
        await let_it_finish.wait()
        return "too late"

    stale = await spawn_worker(registry, worker_settings=silent_settings(make_settings))
    [enqueued] = await store.enqueue([NewTask(name="lease.once", queue="default", payload=None)])
    relay.wake()
    await asyncio.wait_for(started.wait(), 5)

    rescuer = make_rescuer()
    failed = await wait_for_task(store, enqueued.task.id, TaskStatus.FAILED, timeout=5)
    assert failed.error == LEASE_ERROR
    assert failed.attempts == 1
    assert failed.max_attempts == 1
    assert failed.finished_at is not None
    assert failed.worker_id is None
    assert rescuer.rescued == 1
    assert await outbox_count(store, enqueued.task.id) == 0, "a failed task is not dispatched"

    let_it_finish.set()
    await stale.wait_for_idle()
    assert stale.stats.succeeded == 0
    assert await store.get(enqueued.task.id) == failed


async def test_heartbeats_keep_a_run_longer_than_its_lease(
    store, make_settings, spawn_worker, relay, make_rescuer
):
    finish = asyncio.Event()
    registry = Registry()

    @registry.task(name="lease.long", max_attempts=3)
    async def long_run(payload) -> str:
        await finish.wait()
        return "kept"

    short_lease = make_settings(worker={"lease_seconds": 0.5, "heartbeat_seconds": 0.1})
    await spawn_worker(registry, worker_settings=short_lease)
    rescuer = make_rescuer()
    [enqueued] = await store.enqueue([NewTask(name="lease.long", queue="default", payload=None)])
    relay.wake()
    first = await wait_for_task(store, enqueued.task.id, TaskStatus.PROCESSING)

    # Outlive the first lease several times over: the heartbeat must keep pushing it out.
    await wait_for_task(
        store,
        enqueued.task.id,
        lambda t: (
            t.lease_expires_at is not None
            and (t.lease_expires_at - first.lease_expires_at).total_seconds() > 1.5
        ),
        timeout=5,
    )
    for _ in range(2):
        await rescuer.wait_tick()
    finish.set()
    done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE)
    assert done.attempts == 1
    assert done.result == "kept"
    assert rescuer.rescued == 0


async def test_a_worker_that_lost_its_lease_stops_the_handler(
    store, make_settings, spawn_worker, relay, make_rescuer
):
    started = asyncio.Event()
    stopped = asyncio.Event()
    registry = Registry()

    @registry.task(name="lease.lost", max_attempts=3)
    async def lost(payload) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "never"

    settings = make_settings(worker={"lease_seconds": 0.5, "heartbeat_seconds": 0.1})
    worker = await spawn_worker(registry, worker_settings=settings)
    [enqueued] = await store.enqueue([NewTask(name="lease.lost", queue="default", payload=None)])
    relay.wake()
    await asyncio.wait_for(started.wait(), 5)
    await stop_consuming(worker)

    await worker.keeper.stop()  # the worker stalls...
    make_rescuer()
    await wait_for_task(store, enqueued.task.id, TaskStatus.PENDING, timeout=5)
    worker.keeper.start()  # ...and, back, learns that its lease is gone
    await asyncio.wait_for(stopped.wait(), 5)
    await worker.wait_for_idle()

    task = await store.get(enqueued.task.id)
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 1
    assert task.error == LEASE_ERROR
    assert worker.stats.succeeded == worker.stats.failed == worker.stats.released == 0
