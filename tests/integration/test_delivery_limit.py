"""Quorum queues carry a delivery limit, and queues made before it keep working.

A message that every worker taking it died with (a poison message) is delivered again
and again; RabbitMQ dead-letters it after ``delivery_limit`` deliveries. A queue
declared by an earlier Krolik, without the limit, cannot be declared with it (RabbitMQ
refuses a changed argument): Krolik declares it as it is and warns.
"""

from __future__ import annotations

import aio_pika
import pytest

from krolik.broker.base import Delivery
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.broker.wire import TaskMessage
from krolik.settings import Settings
from tests.conftest import AMQP_URL, close_and_delete, test_settings
from tests.integration.conftest import topology_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def quorum_settings(pg_database: str, rabbitmq_available: None, run_id: str) -> Settings:
    return test_settings(
        pg_database, run_id, rabbitmq={"queue_type": "quorum", "delivery_limit": 2}
    )


async def test_a_message_delivered_past_the_limit_is_dead_lettered(quorum_settings) -> None:
    broker = RabbitMQBroker(quorum_settings.rabbitmq, topology_of(quorum_settings))
    await broker.connect()
    try:
        message = TaskMessage(task_id=7, queue=quorum_settings.default_queue, name="x")
        assert (await broker.publish([message])).confirmed == (True,)
        deliveries = 0
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(
                topology_of(quorum_settings).queue(quorum_settings.default_queue).name
            )
            while (incoming := await queue.get(fail=False, no_ack=False)) is not None:
                deliveries += 1
                await incoming.nack(requeue=True)  # as a worker dying with it would
                assert deliveries <= 5, "the delivery limit did not apply"
        assert deliveries == 3  # the first delivery and two more: the limit is 2
        dead = await broker.dead_lettered()
        assert [body for body, _ in dead] == [message.encode()]
    finally:
        await close_and_delete([broker], quorum_settings)


async def test_a_queue_made_without_the_limit_is_used_as_it_is(quorum_settings) -> None:
    name = topology_of(quorum_settings).queue(quorum_settings.default_queue).name
    spec = topology_of(quorum_settings).queue(quorum_settings.default_queue)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments=spec.arguments_without_limit)
    broker = RabbitMQBroker(quorum_settings.rabbitmq, topology_of(quorum_settings))
    consumer = RabbitMQBroker(quorum_settings.rabbitmq, topology_of(quorum_settings))
    await broker.connect()
    try:
        got: list[bytes] = []

        async def receive(delivery: Delivery) -> None:
            got.append(delivery.body)
            await delivery.ack()

        subscription = await consumer.consume([quorum_settings.default_queue], 5, receive)
        message = TaskMessage(task_id=8, queue=quorum_settings.default_queue, name="x")
        assert (await broker.publish([message])).confirmed == (True,)
        await wait_until(lambda: got == [message.encode()], 10, "the message arrives")
        await subscription.cancel()
    finally:
        await close_and_delete([broker, consumer], quorum_settings)
