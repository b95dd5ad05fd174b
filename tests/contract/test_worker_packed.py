"""Packed messages through a real worker, in both deployments Krolik ships.

* production: PostgreSQL store, RabbitMQ broker;
* embedded: SQLite store, in-process broker.

A packed message names several due tasks of one queue. The worker claims as many of
them at once as it has free slots, dead-letters the tasks it cannot run one by one (as
single-task bodies), skips the ones that are not claimable, and acks the message once
every task was claimed or handled: after the worker stops, nothing is left in the
queue and nothing came twice.

Tasks that must stay running block on a semaphore the test releases, never on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from krolik.broker.base import Delivery
from krolik.broker.memory import MemoryBroker
from krolik.broker.topology import ORIGIN_HEADER, REASON_HEADER
from krolik.broker.wire import TaskMessage
from krolik.builtin_tasks import builtin_registry
from krolik.registry import Registry
from krolik.relay import OutboxRelay
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import Task
from krolik.store.sqlite import SqliteTaskStore
from krolik.worker import Worker
from tests.conftest import test_settings, wait_for_task
from tests.contract.deployment import Deployment, StartWorker
from tests.support.waiting import wait_until

GATED = "packed.gated"
UNKNOWN = "packed.no_such_handler"
MISSING_ID = 987_654_321


@dataclass
class Gate:
    """A handler whose runs block until the test lets them go, one ``release()`` each."""

    started: list[Any] = field(default_factory=list)
    running: int = 0
    most_running: int = 0
    _go: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))

    def registry(self) -> Registry:
        registry = Registry()

        @registry.task(name=GATED)
        async def gated(payload: Any) -> Any:
            self.started.append(payload)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                await self._go.acquire()
            finally:
                self.running -= 1
            return payload

        return registry

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._go.release()


def started_count(gate: Gate, count: int) -> Callable[[], bool]:
    return lambda: len(gate.started) == count


def fail_at_once(deployment: Deployment) -> None:
    """Tasks whose handler no live worker has fail on receipt instead of waiting for one."""
    deployment.settings.worker.unserved_fail_after_seconds = 1e-6


async def statuses(store: TaskStore, tasks: Sequence[Task]) -> list[TaskStatus]:
    found = [await store.get(task.id) for task in tasks]
    return [task.status for task in found if task is not None]


# -- one message, every kind of task ---------------------------------------------------
async def test_a_packed_message_of_good_unknown_missing_and_duplicate_tasks(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """Each task of the message gets what a single-task message would have got, and the
    message itself is acked once: nothing is redelivered, nothing dead-lettered twice.
    (No worker has the unknown handler, and its task is due for longer than the worker
    waits for one.)"""
    fail_at_once(deployment)
    [echo] = await deployment.enqueue("echo", [{"say": "hi"}])
    [unknown] = await deployment.enqueue(UNKNOWN, [2])
    assert await deployment.store.get(MISSING_ID) is None
    packed = [
        TaskMessage(echo.id, "echo", deployment.queue),
        TaskMessage(unknown.id, UNKNOWN, deployment.queue),
        TaskMessage(MISSING_ID, "echo", deployment.queue),
        TaskMessage(echo.id, "echo", deployment.queue),  # a duplicate of the first
    ]
    worker = await start_worker()
    await deployment.broker.publish(packed, per_message=len(packed))

    done = await wait_for_task(deployment.store, echo.id, TaskStatus.DONE)
    assert (done.attempts, done.result) == (1, {"say": "hi"})
    failed = await wait_for_task(deployment.store, unknown.id, TaskStatus.FAILED)
    assert UNKNOWN in (failed.error or "")
    assert failed.attempts == 0

    await wait_until(lambda: worker.handled == 1, what="the message is handled")
    await worker.stop(grace_seconds=1)  # anything not acked would go back to the queue now

    dead = {body: headers for body, headers in await deployment.broker.dead_lettered()}
    assert len(dead) == 2
    unknown_body = TaskMessage(unknown.id, UNKNOWN, deployment.queue).encode()
    missing_body = TaskMessage(MISSING_ID, "echo", deployment.queue).encode()
    assert set(dead) == {unknown_body, missing_body}  # single-task bodies, not the packed one
    assert dead[unknown_body][REASON_HEADER].startswith(
        f"no live worker has a handler named {UNKNOWN!r} for queue {deployment.queue!r}"
    )
    assert dead[missing_body][REASON_HEADER] == f"task {MISSING_ID} does not exist"
    assert {headers[ORIGIN_HEADER] for headers in dead.values()} == {deployment.queue}

    assert await deployment.ready() == 0  # acked: not back in the queue
    stats = worker.stats
    assert (stats.claimed, stats.succeeded, stats.skipped, stats.dead_lettered) == (1, 1, 1, 2)


async def test_a_packed_message_of_unknown_handlers_only_is_acked(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """No task left to claim: every one is failed and dead-lettered, the message acked."""
    fail_at_once(deployment)
    unknown = await deployment.enqueue(UNKNOWN, [1, 2, 3])
    worker = await start_worker()
    await deployment.broker.publish(
        [TaskMessage(task.id, UNKNOWN, deployment.queue) for task in unknown], per_message=3
    )
    for task in unknown:
        await wait_for_task(deployment.store, task.id, TaskStatus.FAILED)

    await wait_until(lambda: worker.handled == 1, what="the message is handled")
    await worker.stop(grace_seconds=1)
    bodies = [body for body, _ in await deployment.broker.dead_lettered()]
    assert sorted(bodies) == sorted(
        TaskMessage(task.id, UNKNOWN, deployment.queue).encode() for task in unknown
    )
    assert await deployment.ready() == 0
    assert (worker.stats.claimed, worker.stats.dead_lettered) == (0, 3)


async def test_a_packed_message_naming_one_unknown_task_is_dead_lettered_whole(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """A one-task message in the packed form goes aside as it came (dead_letter, not a
    part), so that the dead-letter queue holds what was received."""
    fail_at_once(deployment)
    [unknown] = await deployment.enqueue(UNKNOWN, [1])
    body = orjson.dumps({"queue": deployment.queue, "tasks": [[unknown.id, UNKNOWN]]})
    worker = await start_worker()
    await deployment.publish_raw(body)
    await wait_for_task(deployment.store, unknown.id, TaskStatus.FAILED)
    await wait_until(lambda: worker.handled == 1, what="the message is handled")
    await worker.stop(grace_seconds=1)
    [(dead_body, headers)] = await deployment.broker.dead_lettered()
    assert dead_body == body
    assert UNKNOWN in headers[REASON_HEADER]
    assert await deployment.ready() == 0
    assert worker.stats.dead_lettered == 1


async def test_a_malformed_packed_message_is_dead_lettered_and_claims_nothing(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """One bad item spoils the whole message: none of its tasks is claimed."""
    [echo] = await deployment.enqueue("echo", [1])
    body = orjson.dumps({"queue": deployment.queue, "tasks": [[echo.id, "echo"], [0, "echo"]]})
    worker = await start_worker()
    await deployment.publish_raw(body)
    await wait_until(lambda: worker.handled == 1, what="the message is handled")
    await worker.stop(grace_seconds=1)
    [(dead_body, headers)] = await deployment.broker.dead_lettered()
    assert dead_body == body
    assert "task_id" in headers[REASON_HEADER]
    assert await deployment.ready() == 0
    assert worker.stats.claimed == 0
    [still] = await statuses(deployment.store, [echo])
    assert still is TaskStatus.PENDING


# -- slots ---------------------------------------------------------------------------
async def test_a_packed_message_is_claimed_in_the_free_slots_only(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """Five tasks, two slots: two run, the others stay pending (not claimed and left
    waiting) until a slot comes free; all five finish, each run once."""
    gate = Gate()
    tasks = await deployment.enqueue(GATED, [1, 2, 3, 4, 5])
    worker = await start_worker(gate.registry(), concurrency=2)
    await deployment.broker.publish(
        [TaskMessage(task.id, GATED, deployment.queue) for task in tasks], per_message=5
    )

    await wait_until(lambda: len(gate.started) == 2, what="two tasks started")
    assert sorted(await statuses(deployment.store, tasks)) == sorted(
        [TaskStatus.PROCESSING] * 2 + [TaskStatus.PENDING] * 3
    )
    for started in (3, 4, 5):
        gate.release()
        await wait_until(started_count(gate, started), what=f"{started} tasks started")
        assert gate.running <= 2
        processing = (await statuses(deployment.store, tasks)).count(TaskStatus.PROCESSING)
        assert processing <= 4  # two running, two finished whose outcome is being written
    gate.release(2)
    for task in tasks:
        finished = await wait_for_task(deployment.store, task.id, TaskStatus.DONE)
        assert finished.attempts == 1
    await wait_until(lambda: worker.handled == 1, what="the message is handled")
    await worker.stop(grace_seconds=1)

    assert sorted(gate.started) == [1, 2, 3, 4, 5]
    assert gate.most_running == 2
    assert (worker.stats.claimed, worker.stats.succeeded, worker.stats.skipped) == (5, 5, 0)
    assert await deployment.ready() == 0
    assert await deployment.broker.dead_lettered() == []


async def test_a_run_writing_its_outcome_gives_its_slot_to_the_next_task(
    deployment: Deployment, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes held back: with two slots, the first two finished runs wait for their
    write without a slot, so two more run; those keep their slots while they wait (at
    most ``concurrency`` runs wait so), and the fifth task waits. All five finish, each
    run once, when the writes go through."""
    writes = asyncio.Event()
    complete_many = deployment.store.complete_many

    async def held_back(completions: Sequence[Any]) -> list[bool]:
        await writes.wait()
        return await complete_many(completions)

    monkeypatch.setattr(deployment.store, "complete_many", held_back)
    gate = Gate()
    gate.release(5)  # the handlers return at once
    tasks = await deployment.enqueue(GATED, [1, 2, 3, 4, 5])
    worker = await start_worker(gate.registry(), concurrency=2)
    await deployment.broker.publish(
        [TaskMessage(task.id, GATED, deployment.queue) for task in tasks], per_message=5
    )

    await wait_until(started_count(gate, 4), what="four tasks started")
    await wait_until(
        lambda: worker._recording == 2 and worker._slots.free == 0 and len(worker.runs) == 4,
        what="two runs wait without a slot, two with theirs",
    )
    assert len(gate.started) == 4  # no slot is free: nothing more can start
    assert (await statuses(deployment.store, tasks)).count(TaskStatus.PENDING) == 1

    writes.set()
    for task in tasks:
        finished = await wait_for_task(deployment.store, task.id, TaskStatus.DONE)
        assert finished.attempts == 1
    await wait_until(lambda: worker.handled == 1, what="the message is handled")
    assert sorted(gate.started) == [1, 2, 3, 4, 5]
    assert worker._recording == 0
    assert worker._slots.free == 2


async def test_a_packed_message_not_fully_claimed_goes_back_when_the_worker_stops(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """The message is acked only once every task was claimed: a worker stopping before
    that leaves it to another, which skips what was claimed and runs the rest."""
    gate = Gate()
    tasks = await deployment.enqueue(GATED, [1, 2, 3])
    first = await start_worker(gate.registry(), concurrency=1)
    await deployment.broker.publish(
        [TaskMessage(task.id, GATED, deployment.queue) for task in tasks], per_message=3
    )
    await wait_until(lambda: len(gate.started) == 1, what="the first task started")

    stopping = asyncio.create_task(first.stop(grace_seconds=5))

    async def given_back() -> bool:
        return await deployment.ready() == 1

    await wait_until(given_back, what="the message is back in the queue")
    gate.release()  # the running task finishes within the grace
    await asyncio.wait_for(stopping, 10)
    assert first.stats.claimed == 1
    assert await statuses(deployment.store, tasks) == [
        TaskStatus.DONE,
        TaskStatus.PENDING,
        TaskStatus.PENDING,
    ]

    second = await start_worker(gate.registry(), concurrency=1)
    gate.release(2)
    for task in tasks:
        finished = await wait_for_task(deployment.store, task.id, TaskStatus.DONE)
        assert finished.attempts == 1
    await wait_until(lambda: second.handled == 1, what="the message is handled")
    await second.stop(grace_seconds=1)
    assert (second.stats.claimed, second.stats.skipped) == (2, 1)
    assert sorted(gate.started) == [1, 2, 3]
    assert await deployment.ready() == 0


async def test_a_redelivered_packed_message_does_not_dead_letter_a_task_twice(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    fail_at_once(deployment)
    gate = Gate()
    [unknown] = await deployment.enqueue(UNKNOWN, [0])
    tasks = await deployment.enqueue(GATED, [1, 2])
    first = await start_worker(gate.registry(), concurrency=1)
    await deployment.broker.publish(
        [TaskMessage(unknown.id, UNKNOWN, deployment.queue)]
        + [TaskMessage(task.id, GATED, deployment.queue) for task in tasks],
        per_message=3,
    )
    await wait_until(lambda: len(gate.started) == 1, what="the first task started")
    stopping = asyncio.create_task(first.stop(grace_seconds=5))

    async def given_back() -> bool:
        return await deployment.ready() == 1

    await wait_until(given_back, what="the message is back in the queue")
    gate.release()
    await asyncio.wait_for(stopping, 10)
    assert len(await deployment.broker.dead_lettered()) == 1

    second = await start_worker(gate.registry(), concurrency=1)
    gate.release()
    await wait_for_task(deployment.store, tasks[1].id, TaskStatus.DONE)
    await wait_until(lambda: second.handled == 1, what="the message is handled")
    await second.stop(grace_seconds=1)
    assert await deployment.ready() == 0
    assert len(await deployment.broker.dead_lettered()) == 1


# -- the relay and the prefetch ------------------------------------------------------
async def test_the_relay_packs_due_tasks_of_a_queue_per_its_setting(
    deployment: Deployment,
) -> None:
    other = "packed-other"
    tasks = await deployment.enqueue("echo", list(range(7)))
    others = await deployment.enqueue("echo", [7, 8], queue=other)
    relay_settings = deployment.settings.relay.model_copy(update={"tasks_per_message": 3})
    relay = OutboxRelay(deployment.store, deployment.broker, relay_settings)
    relay.start()
    try:
        await wait_until(lambda: relay.published == 9, what="the relay published the tasks")
    finally:
        await relay.stop()
    assert (await deployment.ready(), await deployment.ready(other)) == (3, 1)

    arrived: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        await delivery.ack()
        await arrived.put(delivery)

    subscription = await deployment.broker.consume([deployment.queue, other], 10, take)
    try:
        bodies = [(await asyncio.wait_for(arrived.get(), 5)).body for _ in range(4)]
    finally:
        await subscription.cancel()
    groups = [TaskMessage.decode_many(body) for body in bodies]
    by_queue: dict[str, list[list[int]]] = {}
    for group in groups:
        by_queue.setdefault(group[0].queue, []).append([m.task_id for m in group])
        assert len({m.queue for m in group}) == 1
    assert sorted(len(ids) for ids in by_queue[deployment.queue]) == [1, 3, 3]
    assert sorted(i for ids in by_queue[deployment.queue] for i in ids) == [t.id for t in tasks]
    assert by_queue[other] == [[t.id for t in others]]


@pytest.mark.parametrize(
    ("prefetch_count", "concurrency", "per_message", "expected"),
    [
        pytest.param(10, 4, 1, 10, id="one-task-a-message"),
        pytest.param(10, 4, 10, 2, id="at-least-two"),
        pytest.param(10, 40, 10, 4, id="concurrency-above-prefetch"),
        pytest.param(50, 4, 10, 5, id="prefetch-above-concurrency"),
        pytest.param(25, 4, 10, 3, id="rounded-up"),
        pytest.param(10, 4, 10_000, 2, id="huge-messages"),
    ],
)
def test_the_prefetch_counts_messages_for_about_max_prefetch_concurrency_tasks(
    tmp_path: Any, prefetch_count: int, concurrency: int, per_message: int, expected: int
) -> None:
    settings = test_settings(
        "unused",
        "prefetch",
        rabbitmq={"prefetch_count": prefetch_count},
        relay={"tasks_per_message": per_message},
    )
    worker = Worker(
        SqliteTaskStore(tmp_path / "unused.sqlite3"),
        MemoryBroker(),
        builtin_registry,
        settings,
        concurrency=concurrency,
    )
    assert worker.prefetch_messages() == expected


async def test_tasks_waiting_too_long_for_a_slot_are_handed_back_and_the_message_acked(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """One slot, a long first task: the rest of its packed message would wait unacked as
    long as it runs, into RabbitMQ's consumer timeout for long tasks. After hold_seconds
    they go back to the store for any worker, and the message is acked."""
    deployment.settings.worker.hold_seconds = 0.5
    relay = OutboxRelay(deployment.store, deployment.broker, deployment.settings.relay)
    relay.start()
    try:
        gate = Gate()
        tasks = await deployment.enqueue(GATED, [1, 2, 3])
        await drain(deployment)
        first = await start_worker(gate.registry(), concurrency=1)
        await deployment.broker.publish(
            [TaskMessage(task.id, GATED, deployment.queue) for task in tasks], per_message=3
        )
        # Handed back, they come to this worker again (it is the only one) and go back
        # again after another hold: they wait in the store, not in an unacked message.
        await wait_until(lambda: first.stats.handed_back >= 2, what="two tasks handed back")
        await wait_until(lambda: first.handled >= 1, what="the message is acked")
        assert gate.started == [1]
        second = await start_worker(gate.registry(), concurrency=2)
        await wait_until(lambda: sorted(gate.started) == [1, 2, 3], what="the others start")
        gate.release(3)
        for task in tasks:
            finished = await wait_for_task(deployment.store, task.id, TaskStatus.DONE)
            assert finished.attempts == 1
        assert (first.stats.claimed, second.stats.claimed) == (1, 2)
    finally:
        await relay.stop()


async def drain(deployment: Deployment) -> None:
    """Forget the outbox rows of what the test enqueued: it publishes its own message."""
    entries = await deployment.store.claim_outbox(1000, 30)
    await deployment.store.delete_outbox([entry.id for entry in entries])
