"""One queue RabbitMQ will not take does not hold up the others, and is tried again alone.

The relay publishes to three Krolik queues. One of them is deleted in RabbitMQ under
it (its messages come back unroutable), or was declared before with other arguments
(RabbitMQ refuses the declaration). The other queues flow on, what RabbitMQ confirmed
is never published again, the failing queue backs off, is declared again and recovers,
and every task arrives exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from krolik.broker.wire import TaskMessage
from krolik.events import Observer
from krolik.relay import OutboxRelay
from krolik.store.records import NewTask
from tests.conftest import AMQP_URL
from tests.integration.conftest import outbox_count, topology_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


class Failures(Observer):
    def __init__(self) -> None:
        self.queues: Counter[str] = Counter()

    def queue_publish_failed(self, queue: str) -> None:
        self.queues[queue] += 1


class Receiver:
    """Raw consumers on the RabbitMQ queues: what each task got, in messages."""

    def __init__(self, settings: Any) -> None:
        self.topology = topology_of(settings)
        self.seen: Counter[int] = Counter()
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        self.connection = await aio_pika.connect_robust(AMQP_URL)

    async def consume(self, krolik_queue: str) -> None:
        assert self.connection is not None
        channel = await self.connection.channel()
        spec = self.topology.queue(krolik_queue)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        await queue.bind(self.topology.exchange, routing_key=spec.routing_key)

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            for task in TaskMessage.decode_many(message.body):
                self.seen[task.task_id] += 1
            await message.ack()

        await queue.consume(take)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


@pytest.fixture
async def receiver(settings: Any, broker: Any) -> AsyncIterator[Receiver]:
    # ``broker`` declared the exchange; the queues are declared by their consumers here.
    the_receiver = Receiver(settings)
    await the_receiver.start()
    yield the_receiver
    await the_receiver.close()


async def enqueue(store: Any, queue: str, count: int) -> list[int]:
    new = [NewTask(name="echo", queue=queue, payload=i) for i in range(count)]
    return [item.task.id for item in await store.enqueue(new)]


async def amqp_channel() -> tuple[aio_pika.abc.AbstractConnection, Any]:
    connection = await aio_pika.connect(AMQP_URL)
    return connection, await connection.channel()


async def test_a_deleted_queue_backs_off_alone_and_recovers(
    store, settings, make_broker, receiver, make_relay
):
    failures = Failures()
    broker = make_broker()
    relay = OutboxRelay(store, broker, settings.relay, failures)
    for queue in ("alpha", "beta", "gamma"):
        await receiver.consume(queue)
    relay.start()
    try:
        first = {q: await enqueue(store, q, 25) for q in ("alpha", "beta", "gamma")}
        await wait_until(
            lambda: all(receiver.seen[t] == 1 for ids in first.values() for t in ids),
            what="the first tasks arrive",
        )
        connection, channel = await amqp_channel()
        async with connection:
            await channel.queue_delete(topology_of(settings).queue("beta").name)
        second = {q: await enqueue(store, q, 25) for q in ("alpha", "beta", "gamma")}
        await wait_until(
            lambda: all(receiver.seen[t] == 1 for q in ("alpha", "gamma") for t in second[q]),
            what="the other queues flow on",
        )
        await asyncio.sleep(1.0)  # the failing queue is tried again meanwhile
        duplicated = {task: n for task, n in receiver.seen.items() if n != 1}
        assert duplicated == {}, "confirmed messages were published again"
        await wait_until(lambda: failures.queues["beta"] >= 1, what="the failure is reported")
        # The relay declared beta again; a consumer on it gets what waited for it.
        await receiver.consume("beta")
        await wait_until(
            lambda: all(receiver.seen[t] == 1 for t in second["beta"]),
            timeout=20,
            what="the deleted queue recovers",
        )
        await asyncio.sleep(1.0)  # room for a second message to arrive, if one were sent
    finally:
        await relay.stop()
    assert set(failures.queues) == {"beta"}
    duplicated = {task: n for task, n in receiver.seen.items() if n != 1}
    assert duplicated == {}, "a task was published twice"
    assert await outbox_count(store) == 0


async def test_a_queue_declared_with_other_arguments_waits_alone(
    store, settings, make_broker, receiver
):
    topology = topology_of(settings)
    odd = topology.queue("odd")
    connection, channel = await amqp_channel()
    async with connection:
        # Someone declared it first, with arguments Krolik's declaration does not match.
        await channel.declare_queue(odd.name, durable=True, arguments={"x-max-length": 7})
    failures = Failures()
    relay = OutboxRelay(store, make_broker(), settings.relay, failures)
    await receiver.consume("fine")
    relay.start()
    try:
        odd_ids = await enqueue(store, "odd", 5)
        fine_ids = await enqueue(store, "fine", 30)
        await wait_until(
            lambda: all(receiver.seen[t] == 1 for t in fine_ids), what="the other queue flows"
        )
        await wait_until(lambda: failures.queues["odd"] >= 2, what="the odd queue backs off")
        assert await outbox_count(store) == len(odd_ids), "its rows wait in the outbox"
        tries = failures.queues["odd"]
        await asyncio.sleep(1.0)
        assert failures.queues["odd"] - tries <= 2, "it backs off, longer each time"

        connection, channel = await amqp_channel()
        async with connection:
            await channel.queue_delete(odd.name)  # the operator removes the odd one
        await receiver.consume("odd")
        await wait_until(
            lambda: all(receiver.seen[t] == 1 for t in odd_ids),
            timeout=40,
            what="the queue recovers once it can be declared",
        )
    finally:
        await relay.stop()
    assert {task: n for task, n in receiver.seen.items() if n != 1} == {}


class PublishFailures(Observer):
    def __init__(self) -> None:
        self.count = 0

    def outbox_publish_failed(self, count: int) -> None:
        self.count += 1


async def test_the_relay_backs_off_while_rabbitmq_is_away(
    store, make_settings, proxied_broker, rabbit_proxy
):
    """A relay polling every 50 ms keeps trying to publish during an outage, but not on
    every tick: each failed try waits longer before the next (up to a few seconds)."""
    failures = PublishFailures()
    quick = make_settings(relay={"poll_seconds": 0.05})
    relay = OutboxRelay(store, proxied_broker(), quick.relay, failures)
    relay.start()
    try:
        await store.enqueue([NewTask(name="echo", queue="default", payload=1)])
        await wait_until(lambda: _outbox_empty(store), what="published before the outage")
        await rabbit_proxy.cut()
        await store.enqueue([NewTask(name="echo", queue="default", payload=2)])
        await asyncio.sleep(3.0)  # the outage
        tries = failures.count
        assert 1 <= tries <= 8, f"{tries} failed tries in 3 s: it does not back off"
        await rabbit_proxy.restore()
        await wait_until(lambda: _outbox_empty(store), timeout=15, what="published after it")
    finally:
        await relay.stop()


async def _outbox_empty(store: Any) -> bool:
    return await outbox_count(store) == 0
