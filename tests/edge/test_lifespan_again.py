"""An app whose lifespan runs a second time (test clients, Schemathesis, embedded
servers do this) serves and relays again: its relay connects the broker the app
closed at the end of the first run, instead of trusting a stale "connected"."""

from __future__ import annotations

from collections.abc import Callable

import aio_pika
import httpx
from asgi_lifespan import LifespanManager

from krolik.api.app import create_app
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.node import Node, Role
from krolik.relay import OutboxRelay
from krolik.settings import Settings
from krolik.store.base import TaskStore
from tests.conftest import AMQP_URL
from tests.edge.conftest import BASE_URL, wait_until


async def test_second_lifespan_relays_again(
    store: TaskStore, make_settings: Callable[..., Settings]
):
    # The node owns its store and broker: it closes them at shutdown.
    app = create_app(Node.build(make_settings(), {Role.API}))
    relay: OutboxRelay = app.state.node.relay
    broker: RabbitMQBroker = app.state.node.broker
    try:
        for run in range(2):
            async with (
                LifespanManager(app) as manager,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=manager.app), base_url=BASE_URL
                ) as api,
            ):
                published = relay.published
                created = await api.post("/tasks/", json={"payload": run})
                assert created.status_code == 201, created.text
                await wait_until(
                    lambda published=published: relay.published > published,
                    timeout=10,
                    what=f"run {run}: the relay published the task",
                )

                async def ready() -> bool:
                    return (await api.get("/health/ready")).status_code == 200

                await wait_until(ready, timeout=10, what=f"run {run}: ready")
    finally:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        async with connection:
            channel = await connection.channel()
            for name in broker.queue_names:
                await channel.queue_delete(name)
            for exchange in (broker.topology.exchange, broker.topology.dead_letter_exchange):
                await channel.exchange_delete(exchange)
