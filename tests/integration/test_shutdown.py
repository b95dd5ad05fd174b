"""Graceful shutdown: runs that end within the grace finish; the rest are released to
pending without counting the attempt, for another worker to take at once; messages
still waiting for a slot go back to the queue; a claim in flight is not lost."""

from __future__ import annotations

import asyncio
import time

from krolik.registry import Registry
from krolik.settings import DatabaseSettings
from krolik.states import TaskStatus
from krolik.store.postgres import PostgresTaskStore, create_engine
from krolik.store.records import NewTask
from tests.conftest import wait_for_task
from tests.integration.conftest import outbox_count, queue_depth, topology_of, wait_until

LONG_LEASE = {"worker": {"lease_seconds": 30, "heartbeat_seconds": 0.3}}
"""A lease far longer than any test: whatever moves a task here, it is not a rescue."""


class LongTask:
    """A handler that runs "forever" on the worker named in ``stuck_on``, briefly elsewhere."""

    def __init__(self) -> None:
        self.stuck_on: set[str] = set()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self, payload, context) -> str:
        if context.worker_id in self.stuck_on:
            self.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.stopped.set()
                raise
        return f"finished by {context.worker_id}"


async def test_stop_lets_short_runs_finish_and_releases_long_ones_at_once(
    store, make_settings, spawn_worker, relay
):
    long_task = LongTask()
    short_started = asyncio.Event()
    registry = Registry()
    registry.add(long_task.run, name="stop.long")

    @registry.task(name="stop.short")
    async def short(payload) -> str:
        short_started.set()
        await asyncio.sleep(0.2)
        return "short done"

    settings = make_settings(**LONG_LEASE)
    first = await spawn_worker(registry, worker_settings=settings)
    long_task.stuck_on.add(first.worker_id)
    [long_one, short_one] = await store.enqueue(
        [
            NewTask(name="stop.long", queue="default", payload=None),
            NewTask(name="stop.short", queue="default", payload=None),
        ]
    )
    relay.wake()
    await asyncio.wait_for(asyncio.gather(long_task.started.wait(), short_started.wait()), 5)

    began = time.monotonic()
    await first.stop(grace_seconds=1)
    took = time.monotonic() - began
    assert 0.9 <= took < 3, f"stop took {took:.2f}s"

    # When stop() returns, both outcomes are already recorded.
    short_done = await store.get(short_one.task.id)
    assert short_done.status is TaskStatus.DONE
    assert short_done.result == "short done"
    released = await store.get(long_one.task.id)
    assert released.status is TaskStatus.PENDING
    assert released.attempts == 0, "a released run does not count as an attempt"
    assert released.worker_id is None
    assert released.lease_expires_at is None
    assert long_task.stopped.is_set()
    assert (first.stats.succeeded, first.stats.released) == (1, 1)

    second = await spawn_worker(registry, worker_settings=settings)
    done = await wait_for_task(store, long_one.task.id, TaskStatus.DONE, timeout=5)
    assert done.worker_id == second.worker_id
    assert done.result == f"finished by {second.worker_id}"
    assert done.attempts == 1
    assert time.monotonic() - began < 6, "picked up only after a delay (a rescue?)"


async def test_messages_waiting_for_a_slot_go_back_to_the_queue(
    store, settings, make_settings, spawn_worker, relay, amqp
):
    long_task = LongTask()
    registry = Registry()
    registry.add(long_task.run, name="stop.long")
    worker_settings = make_settings(**LONG_LEASE)
    first = await spawn_worker(registry, worker_settings=worker_settings, concurrency=1)
    long_task.stuck_on.add(first.worker_id)
    [long_one] = await store.enqueue([NewTask(name="stop.long", queue="default", payload=None)])
    relay.wake()
    await asyncio.wait_for(long_task.started.wait(), 5)

    waiting = await store.enqueue(
        [NewTask(name="echo", queue="default", payload=i) for i in range(3)]
    )
    relay.wake()
    queue_name = topology_of(settings).queue("default").name

    async def held_by_the_worker() -> bool:
        # Published (no outbox rows left) and not in the queue: the worker holds them.
        return await outbox_count(store) == 0 and await queue_depth(amqp, queue_name) == 0

    await wait_until(held_by_the_worker, what="the worker holds the three tasks' message(s)")

    await first.stop(grace_seconds=0.3)
    assert first.stats.claimed == 1
    for enqueued in waiting:
        task = await store.get(enqueued.task.id)
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 0)

    async def back_in_the_queue() -> bool:
        # The relay packs tasks published together: one message or up to three.
        return await queue_depth(amqp, queue_name) >= 1

    await wait_until(back_in_the_queue, what="the waiting messages are back in the queue")

    second = await spawn_worker(registry, worker_settings=worker_settings)
    for enqueued in [long_one, *waiting]:
        done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE, timeout=5)
        assert done.worker_id == second.worker_id
        assert done.attempts == 1


class GatedClaims(PostgresTaskStore):
    """The real store, except that a claim, once committed, returns when the test says."""

    def __init__(self, db: DatabaseSettings) -> None:
        # Built as from_settings builds a store, so that behind PgBouncer its own
        # asyncpg connections cache no named statement either.
        super().__init__(create_engine(db), pgbouncer=db.pgbouncer)
        self.committed = asyncio.Event()
        self.proceed = asyncio.Event()

    async def claim_many(self, *args, **kwargs):
        tasks = await super().claim_many(*args, **kwargs)
        self.committed.set()
        await self.proceed.wait()
        return tasks


async def test_a_claim_in_flight_when_the_worker_stops_is_released_not_stranded(
    store, settings, make_settings, spawn_worker, relay
):
    """stop() closes the consumer channel, and aiormq cancels the delivery callbacks
    running on it: a claim already committed must still end as a run (released)."""
    long_task = LongTask()
    registry = Registry()
    registry.add(long_task.run, name="stop.long")
    worker_settings = make_settings(**LONG_LEASE)
    gated = GatedClaims(settings.db)
    try:
        first = await spawn_worker(registry, worker_settings=worker_settings, worker_store=gated)
        long_task.stuck_on.add(first.worker_id)
        [enqueued] = await store.enqueue([NewTask(name="stop.long", queue="default", payload=1)])
        relay.wake()
        await asyncio.wait_for(gated.committed.wait(), 5)

        stopping = asyncio.create_task(first.stop(grace_seconds=0.3))
        await wait_until(lambda: first._subscription is None, what="the consumer is closed")
        gated.proceed.set()
        await asyncio.wait_for(stopping, 5)

        task = await store.get(enqueued.task.id)
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 0), task
        second = await spawn_worker(registry, worker_settings=worker_settings)
        done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE, timeout=5)
        assert done.worker_id == second.worker_id
        assert done.attempts == 1
    finally:
        await gated.close()


async def test_a_claim_that_returns_after_the_grace_is_released_at_once(
    store, settings, make_settings, spawn_worker, relay
):
    long_task = LongTask()
    registry = Registry()
    registry.add(long_task.run, name="stop.long")
    worker_settings = make_settings(**LONG_LEASE)
    gated = GatedClaims(settings.db)
    try:
        first = await spawn_worker(registry, worker_settings=worker_settings, worker_store=gated)
        long_task.stuck_on.add(first.worker_id)
        [enqueued] = await store.enqueue([NewTask(name="stop.long", queue="default", payload=1)])
        relay.wake()
        await asyncio.wait_for(gated.committed.wait(), 5)

        began = time.monotonic()
        stopping = asyncio.create_task(first.stop(grace_seconds=0.2))
        # The scenario needs the grace to be over before the claim returns.
        await asyncio.sleep(0.5)
        gated.proceed.set()
        await asyncio.wait_for(stopping, 5)
        assert time.monotonic() - began < 2, "stop() waited for a run it should have released"

        task = await store.get(enqueued.task.id)
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 0), task
        assert not first.runs
    finally:
        await gated.close()


async def test_a_release_during_a_database_outage_lands_before_the_worker_stops(
    store, make_settings, spawn_worker, relay, proxied_store, pg_proxy
):
    """The worker is told to stop while PostgreSQL is away for longer than the old fixed
    10 s wait: releasing its run retries for as long as the lease lasts, and the stop
    waits for it, so the task is back to pending (attempt not counted) before the
    process would exit, rather than left to the rescuer a lease later."""
    long = LongTask()
    registry = Registry()
    registry.add(long.run, name="shutdown.blip", max_attempts=3)
    lease = make_settings(worker={"lease_seconds": 16, "heartbeat_seconds": 0.3})
    worker = await spawn_worker(registry, worker_settings=lease, worker_store=proxied_store)
    long.stuck_on.add(worker.worker_id)
    [enqueued] = await store.enqueue([NewTask(name="shutdown.blip", queue="default", payload=1)])
    relay.wake()
    await asyncio.wait_for(long.started.wait(), 5)

    await pg_proxy.cut()
    stopping = asyncio.create_task(worker.stop(grace_seconds=0))
    await asyncio.wait_for(long.stopped.wait(), 5)
    await asyncio.sleep(11.5)  # the outage itself
    assert not stopping.done(), "the worker stopped before its release was written"
    await pg_proxy.restore()
    await asyncio.wait_for(stopping, 10)
    released = await store.get(enqueued.task.id)
    assert (released.status, released.attempts) == (TaskStatus.PENDING, 0)
    assert worker.stats.released == 1
