"""Poison messages on the real RabbitMQ: a body that is not JSON (or not a task message),
a message naming an unknown handler and one naming a task that does not exist each go to
the dead-letter queue once, with the reason in ``x-krolik-reason``, counted in the
worker's stats and in ``krolik_messages_dead_lettered_total{reason=...}``; nothing is
redelivered, so the main queue is empty afterwards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest

from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.broker.topology import ORIGIN_HEADER, REASON_HEADER, Topology
from krolik.broker.wire import TaskMessage
from krolik.metrics import Metrics
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask
from krolik.worker import Worker
from tests.conftest import AMQP_URL, wait_for_task
from tests.edge.conftest import wait_until
from tests.support.amqp import publish_raw

MakeWorker = Callable[..., Awaitable[Worker]]


def _topology(settings: Settings) -> Topology:
    return Topology.from_settings(settings.rabbitmq, settings.default_queue)


async def _publish_raw(settings: Settings, body: bytes) -> None:
    """A message straight onto the default queue's routing key, as any client could."""
    await publish_raw(AMQP_URL, _topology(settings), settings.default_queue, body)


async def _ready_in_main_queue(settings: Settings) -> int:
    """Messages ready in the default queue, by a passive declare."""
    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            _topology(settings).queue(settings.default_queue).name, passive=True
        )
        return int(queue.declaration_result.message_count or 0)


def _dead_lettered_total(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "krolik_messages_dead_lettered_total", {"reason": reason}
    )
    return value or 0.0


async def _assert_dead_lettered_once(
    worker: Worker,
    broker: RabbitMQBroker,
    metrics: Metrics,
    settings: Settings,
    label: str,
    reason_part: str,
    body: bytes,
) -> dict[str, Any]:
    async def in_dead_letter_queue() -> bool:
        return len(await broker.dead_lettered()) >= 1

    await wait_until(in_dead_letter_queue, timeout=10, what="the message is dead-lettered")
    await worker.stop(grace_seconds=1)  # anything unacked would go back to the queue now
    [(dead_body, headers)] = await broker.dead_lettered()
    assert dead_body == body
    assert reason_part in headers[REASON_HEADER], headers
    assert headers[ORIGIN_HEADER] == settings.default_queue
    assert worker.stats.dead_lettered == 1
    assert worker.stats.claimed == 0
    assert _dead_lettered_total(metrics, label) == 1.0
    assert await _ready_in_main_queue(settings) == 0
    return headers


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        pytest.param(b"this is not JSON {", "not JSON", id="not-json"),
        pytest.param(b"\xff\xfe\x00\x01", "not JSON", id="binary"),
        pytest.param(b"[1, 2, 3]", "not a JSON object", id="json-array"),
        pytest.param(
            b'{"task_id": "12", "name": "default", "queue": "default"}',
            "task_id",
            id="task-id-a-string",
        ),
        pytest.param(b'{"task_id": 1, "queue": "default"}', "name", id="no-name"),
    ],
)
async def test_malformed_message_is_dead_lettered(
    make_worker: MakeWorker, settings: Settings, body: bytes, reason_part: str
):
    metrics = Metrics()
    worker = await make_worker(observer=metrics)
    await _publish_raw(settings, body)
    await _assert_dead_lettered_once(
        worker, worker.broker, metrics, settings, "malformed", reason_part, body
    )


async def test_unknown_handler_is_dead_lettered_and_its_task_failed(
    make_worker: MakeWorker, store: TaskStore, settings: Settings
):
    settings.worker.unserved_fail_after_seconds = 1e-6  # no waiting for another worker
    [enqueued] = await store.enqueue(
        [NewTask(name="no.such.handler", queue=settings.default_queue, payload=1)]
    )
    task = enqueued.task
    metrics = Metrics()
    worker = await make_worker(observer=metrics)
    message = TaskMessage(task_id=task.id, name=task.name, queue=task.queue)
    await worker.broker.publish([message])
    await _assert_dead_lettered_once(
        worker,
        worker.broker,
        metrics,
        settings,
        "unknown_handler",
        "'no.such.handler'",
        message.encode(),
    )
    failed = await wait_for_task(store, task.id, TaskStatus.FAILED)
    assert "no.such.handler" in (failed.error or "")
    assert failed.attempts == 0


async def test_message_naming_a_missing_task_is_dead_lettered(
    make_worker: MakeWorker, store: TaskStore, settings: Settings
):
    metrics = Metrics()
    worker = await make_worker(observer=metrics)
    missing = 987_654_321
    assert await store.get(missing) is None
    message = TaskMessage(task_id=missing, name="default", queue=settings.default_queue)
    await worker.broker.publish([message])
    await _assert_dead_lettered_once(
        worker, worker.broker, metrics, settings, "missing_task", str(missing), message.encode()
    )
    assert await store.get(missing) is None


async def test_a_duplicate_of_a_finished_task_is_dropped_not_dead_lettered(
    make_worker: MakeWorker, store: TaskStore, settings: Settings
):
    """The other side of the rule: a task that exists but is not claimable (a duplicate
    delivery) is acked and skipped, not treated as poison."""
    [enqueued] = await store.enqueue(
        [NewTask(name="default", queue=settings.default_queue, payload="once")]
    )
    task = enqueued.task
    metrics = Metrics()
    worker = await make_worker(observer=metrics)
    message = TaskMessage(task_id=task.id, name=task.name, queue=task.queue)
    await worker.broker.publish([message])
    await wait_for_task(store, task.id, TaskStatus.DONE)
    await worker.broker.publish([message])
    await wait_until(lambda: worker.stats.skipped == 1, what="the duplicate is skipped")
    await worker.stop(grace_seconds=1)
    assert worker.stats.dead_lettered == 0
    assert await worker.broker.dead_lettered() == []
    assert await _ready_in_main_queue(settings) == 0
