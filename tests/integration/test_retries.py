"""Failures: retried with backoff while attempts last, then failed (the dead-letter
state) with the error and traceback kept, visible in the API and retried from it;
timeouts are failures; bad messages end in RabbitMQ's dead-letter queue."""

from __future__ import annotations

import asyncio

import aio_pika

from krolik.broker.topology import ORIGIN_HEADER, REASON_HEADER
from krolik.broker.wire import TaskMessage
from krolik.registry import Registry
from krolik.states import TaskStatus
from krolik.store.records import NewTask
from tests.conftest import wait_for_task
from tests.integration.conftest import queue_depth, topology_of, wait_until


def pending_after(attempts: int):
    return lambda t: t.status is TaskStatus.PENDING and t.attempts == attempts


async def test_a_handler_failing_twice_then_succeeding_ends_done_after_backoff(
    store, make_settings, spawn_worker, relay
):
    attempts_seen: list[int] = []
    registry = Registry()

    @registry.task(name="retry.flaky", max_attempts=5)
    async def flaky(payload, context) -> str:
        attempts_seen.append(context.attempt)
        if context.attempt < 3:
            raise RuntimeError(f"failure {context.attempt}")
        return "third time lucky"

    # Backoff of 0.5 to 1 s: long enough to see the task wait, pending, with its error.
    slow_backoff = make_settings(retry={"backoff_base_seconds": 1.0, "backoff_max_seconds": 1.0})
    await spawn_worker(registry, worker_settings=slow_backoff)
    [enqueued] = await store.enqueue([NewTask(name="retry.flaky", queue="default", payload=1)])
    relay.wake()

    first = await wait_for_task(store, enqueued.task.id, pending_after(1))
    assert first.error == "RuntimeError: failure 1"
    assert "failure 1" in first.traceback
    assert (first.run_at - first.updated_at).total_seconds() >= 0.45, "no backoff"
    assert first.run_at > first.started_at
    assert first.worker_id is None

    second = await wait_for_task(store, enqueued.task.id, pending_after(2))
    assert second.error == "RuntimeError: failure 2"
    assert "failure 2" in second.traceback
    assert (second.run_at - second.updated_at).total_seconds() >= 0.45
    assert second.run_at > first.run_at

    done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE)
    assert done.attempts == 3
    assert done.result == "third time lucky"
    assert done.error is None
    assert done.traceback is None
    assert done.started_at >= second.run_at, "it ran before its backoff was over"
    assert attempts_seen == [1, 2, 3]


async def test_a_handler_that_always_fails_is_dead_and_the_api_retries_it(api, store, make_worker):
    healed = False
    registry = Registry()

    @registry.task(name="retry.doomed", max_attempts=2)
    async def doomed(payload) -> str:
        if not healed:
            raise ValueError(f"cannot process {payload}")
        return "recovered"

    await make_worker(registry)
    fine = (await api.post("/tasks", json={"name": "echo", "payload": 1})).json()["id"]
    created = await api.post("/tasks", json={"name": "retry.doomed", "payload": 7})
    assert created.status_code == 201
    task_id = created.json()["id"]

    failed = await wait_for_task(store, task_id, TaskStatus.FAILED)
    assert failed.attempts == 2
    assert failed.max_attempts == 2
    assert failed.error == "ValueError: cannot process 7"
    assert "ValueError: cannot process 7" in failed.traceback
    assert "doomed" in failed.traceback
    assert failed.finished_at is not None
    await wait_for_task(store, fine, TaskStatus.DONE)

    detail = (await api.get(f"/tasks/{task_id}")).json()
    assert detail["status"] == "failed"
    assert detail["error"] == "ValueError: cannot process 7"
    assert "Traceback" in detail["traceback"]
    dead = (await api.get("/tasks", params={"status": "failed"})).json()
    assert [item["id"] for item in dead["items"]] == [task_id]

    healed = True
    retried = await api.post(f"/tasks/{task_id}/retry")
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body["status"] == "pending"
    assert body["attempts"] == 0
    assert body["error"] is None
    assert body["finished_at"] is None

    done = await wait_for_task(store, task_id, TaskStatus.DONE)
    assert done.attempts == 1
    assert done.result == "recovered"
    assert done.traceback is None
    assert (await api.get("/tasks", params={"status": "failed"})).json()["items"] == []


async def test_a_handler_timeout_is_a_failure(store, relay, make_worker):
    cancelled = asyncio.Event()
    registry = Registry()

    @registry.task(name="retry.slowpoke", max_attempts=1, timeout=0.2)
    async def slowpoke(payload) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    @registry.task(name="retry.sleepy", max_attempts=1)
    async def sleepy(payload) -> str:
        await asyncio.sleep(30)
        return "never"

    await make_worker(registry)
    [by_handler, by_task] = await store.enqueue(
        [
            NewTask(name="retry.slowpoke", queue="default", payload=None),
            # The task's own timeout, when given, wins over the handler's (none here).
            NewTask(name="retry.sleepy", queue="default", payload=None, timeout_seconds=0.2),
        ]
    )
    relay.wake()
    for enqueued in (by_handler, by_task):
        failed = await wait_for_task(store, enqueued.task.id, TaskStatus.FAILED, timeout=5)
        assert failed.error.startswith("TimeoutError")
        assert "0.2s" in failed.error
        assert failed.attempts == 1
        assert (failed.finished_at - failed.started_at).total_seconds() < 2
    assert cancelled.is_set(), "the handler was left running"


async def test_unparseable_messages_end_in_the_dead_letter_queue_with_a_reason(
    settings, broker, make_worker, amqp
):
    worker = await make_worker()
    topology = topology_of(settings)
    routing_key = topology.queue("default").routing_key
    exchange = await amqp.get_exchange(topology.exchange)
    for body in (b"not json", b'{"task_id": "seven", "name": "echo", "queue": "default"}'):
        await exchange.publish(aio_pika.Message(body), routing_key=routing_key, mandatory=True)

    await wait_until(lambda: worker.stats.dead_lettered == 2)

    async def both_dead_lettered() -> bool:
        return len(await broker.dead_lettered()) == 2

    await wait_until(both_dead_lettered, what="two messages in the dead-letter queue")
    dead = {body: headers for body, headers in await broker.dead_lettered()}
    assert dead[b"not json"][REASON_HEADER].startswith("the body is not JSON")
    assert dead[b"not json"][ORIGIN_HEADER] == "default"
    not_a_task = dead[b'{"task_id": "seven", "name": "echo", "queue": "default"}']
    assert not_a_task[REASON_HEADER] == "task_id is missing or not a positive 64-bit integer"
    assert worker.stats.claimed == 0
    await worker.wait_for_idle()
    assert await queue_depth(amqp, topology.queue("default").name) == 0


async def test_a_task_no_live_worker_can_run_waits_then_fails_and_is_dead_lettered(
    store, broker, relay, make_worker, settings
):
    """No live worker has its handler: the task stays pending (another worker may come
    with it, e.g. in a rolling deploy) until it has been due for the configured time."""
    settings.worker.unserved_fail_after_seconds = 1.0
    worker = await make_worker()
    [enqueued] = await store.enqueue(
        [NewTask(name="no.such.handler", queue="default", payload={"x": 1})]
    )
    relay.wake()
    await wait_until(lambda: worker.stats.declined >= 1, what="the task is put back")
    waiting = await store.get(enqueued.task.id)
    assert waiting.status is TaskStatus.PENDING, "not failed while it may still be served"
    failed = await wait_for_task(store, enqueued.task.id, TaskStatus.FAILED, timeout=10)
    reason = "no live worker has a handler named 'no.such.handler' for queue 'default', for 1 s"
    assert failed.error == reason
    assert (failed.finished_at - failed.run_at).total_seconds() >= 1.0
    assert failed.attempts == 0, "it never ran"
    assert failed.finished_at is not None

    async def dead_lettered() -> bool:
        return len(await broker.dead_lettered()) == 1

    await wait_until(dead_lettered, what="the message in the dead-letter queue")
    [(body, headers)] = await broker.dead_lettered()
    assert TaskMessage.decode(body) == TaskMessage(enqueued.task.id, "no.such.handler", "default")
    assert headers[REASON_HEADER] == reason
    assert worker.stats.dead_lettered == 1
    assert worker.stats.claimed == 0


async def test_a_failure_after_a_cancel_request_is_told_as_a_cancel(store, relay, make_worker):
    """The store ends such a run cancelled rather than retried: the worker's log and
    counters say cancelled too, not "retry scheduled"."""
    registry = Registry()

    @registry.task(name="retry.cancelled_then_fails", max_attempts=3)
    async def cancelled_then_fails(payload, context) -> None:
        await store.cancel(context.task_id)  # as if DELETE came in while it ran
        raise RuntimeError("gave up")

    worker = await make_worker(registry)
    [enqueued] = await store.enqueue(
        [NewTask(name="retry.cancelled_then_fails", queue="default", payload=None)]
    )
    relay.wake()
    task = await wait_for_task(store, enqueued.task.id, TaskStatus.CANCELLED, timeout=5)
    assert task.attempts == 1
    await wait_until(lambda: worker.stats.cancelled == 1, what="the worker counted a cancel")
    assert worker.stats.retried == 0
