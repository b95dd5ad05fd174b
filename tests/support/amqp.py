"""Raw AMQP for tests: put any bytes on a Krolik queue, as any client could."""

from __future__ import annotations

import aio_pika

from krolik.broker.topology import Topology


async def publish_raw(amqp_url: str, topology: Topology, queue: str, body: bytes) -> None:
    """``body`` onto ``queue``'s routing key through the Krolik exchange."""
    connection = await aio_pika.connect(amqp_url, timeout=5)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.exchange)
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=topology.queue(queue).routing_key,
            mandatory=True,
        )
