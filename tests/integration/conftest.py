"""Fixtures for the integration tests: workers, relays and rescuers with their own settings,
TCP proxies to cut PostgreSQL or RabbitMQ away, raw AMQP access, and condition waits.

Everything here talks to the real PostgreSQL and RabbitMQ of ``tests/conftest.py``;
nothing is mocked. Every object a factory builds is stopped/closed at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from sqlalchemy import func, select

from krolik.broker.base import Broker
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.broker.topology import Topology
from krolik.builtin_tasks import builtin_registry
from krolik.maintenance import LeaseRescuer
from krolik.registry import Registry
from krolik.relay import OutboxRelay
from krolik.settings import DatabaseSettings, RabbitMQSettings, Settings
from krolik.store.base import TaskStore
from krolik.store.postgres import PostgresTaskStore
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import outbox, tasks
from krolik.worker import Worker
from tests.conftest import (
    AMQP_URL,
    BEHIND_PGBOUNCER,
    PG_HOST,
    PG_PORT,
    close_and_delete,
    pg_url,
    test_settings,
)
from tests.support.proxy import TcpProxy
from tests.support.waiting import Condition, wait_until  # noqa: F401


async def outbox_count(store: TaskStore, task_id: int | None = None) -> int:
    """Rows in krolik_outbox (for one task when ``task_id`` is given)."""
    assert isinstance(store, SqlTaskStore)
    stmt = select(func.count()).select_from(outbox)
    if task_id is not None:
        stmt = stmt.where(outbox.c.task_id == task_id)
    async with store.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


def topology_of(settings: Settings) -> Topology:
    return Topology.from_settings(settings.rabbitmq, settings.default_queue)


@pytest.fixture
def make_settings(
    pg_database: str, rabbitmq_available: None, run_id: str
) -> Callable[..., Settings]:
    """Settings like the ``settings`` fixture (same database and RabbitMQ names), with overrides."""

    def factory(**overrides: Any) -> Settings:
        return test_settings(pg_database, run_id, **overrides)

    return factory


@pytest.fixture
async def spawn_worker(
    store: TaskStore, settings: Settings, make_broker: Callable[[], RabbitMQBroker]
) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Like ``make_worker``, but with its own settings, store or broker when given."""
    started: list[Worker] = []

    async def factory(
        registry: Registry | None = None,
        *,
        worker_settings: Settings | None = None,
        worker_store: TaskStore | None = None,
        worker_broker: Broker | None = None,
        **kwargs: Any,
    ) -> Worker:
        worker = Worker(
            worker_store or store,
            worker_broker or make_broker(),
            builtin_registry.merged(registry or Registry()),
            worker_settings or settings,
            **kwargs,
        )
        await worker.start()
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        if worker.accepting:
            await worker.stop(grace_seconds=0.5)


@pytest.fixture
async def make_relay(
    store: TaskStore, settings: Settings, make_broker: Callable[[], RabbitMQBroker]
) -> AsyncIterator[Callable[..., OutboxRelay]]:
    """Outbox relays, each with its own broker unless one is given; stopped at the end."""
    made: list[OutboxRelay] = []

    def factory(
        relay_broker: Broker | None = None,
        *,
        relay_settings: Settings | None = None,
        start: bool = True,
    ) -> OutboxRelay:
        relay = OutboxRelay(
            store, relay_broker or make_broker(), (relay_settings or settings).relay
        )
        if start:
            relay.start()
        made.append(relay)
        return relay

    yield factory
    for relay in made:
        await relay.stop()


@pytest.fixture
async def make_rescuer(
    store: TaskStore, settings: Settings
) -> AsyncIterator[Callable[..., LeaseRescuer]]:
    made: list[LeaseRescuer] = []

    def factory(rescuer_settings: Settings | None = None) -> LeaseRescuer:
        rescuer = LeaseRescuer(store, (rescuer_settings or settings).maintenance)
        rescuer.start()
        made.append(rescuer)
        return rescuer

    yield factory
    for rescuer in made:
        await rescuer.stop()


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[str, int], Awaitable[TcpProxy]]]:
    proxies: list[TcpProxy] = []

    async def factory(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        await proxy.stop()


@pytest.fixture
async def rabbit_proxy(make_proxy: Callable[[str, int], Awaitable[TcpProxy]]) -> TcpProxy:
    """A proxy in front of RabbitMQ."""
    url = aio_pika.connection.make_url(AMQP_URL)
    return await make_proxy(url.host or "127.0.0.1", url.port or 5672)


@pytest.fixture
async def pg_proxy(make_proxy: Callable[[str, int], Awaitable[TcpProxy]]) -> TcpProxy:
    """A proxy in front of PostgreSQL."""
    return await make_proxy(PG_HOST, PG_PORT)


@pytest.fixture
async def proxied_broker(
    settings: Settings, rabbit_proxy: TcpProxy
) -> AsyncIterator[Callable[[], RabbitMQBroker]]:
    """Brokers that reach RabbitMQ through ``rabbit_proxy`` (reconnecting quickly)."""
    made: list[RabbitMQBroker] = []
    rabbit = RabbitMQSettings.model_validate(
        {
            **settings.rabbitmq.model_dump(),
            "url": f"amqp://guest:guest@127.0.0.1:{rabbit_proxy.port}/?reconnect_interval=0.2",
            "publish_timeout_seconds": 1.0,
        }
    )

    def factory() -> RabbitMQBroker:
        broker = RabbitMQBroker(rabbit, topology_of(settings))
        made.append(broker)
        return broker

    yield factory
    # An app's robust connection may declare its queues again after the other brokers'
    # clean-up: these delete what they declared too.
    await close_and_delete(made, settings)


@pytest.fixture
async def proxied_store(pg_database: str, pg_proxy: TcpProxy) -> AsyncIterator[PostgresTaskStore]:
    """A store that reaches PostgreSQL through ``pg_proxy``.

    Request it before ``make_api``, so that it is closed after the app stopped.
    """
    the_store = PostgresTaskStore.from_settings(
        DatabaseSettings(
            url=pg_url(pg_database, host="127.0.0.1", port=pg_proxy.port),  # type: ignore[arg-type]
            pool_size=2,
            connect_timeout_seconds=2,
            pgbouncer=BEHIND_PGBOUNCER,  # the proxy may lead to PgBouncer (cluster tests)
        )
    )
    yield the_store
    await the_store.close()


@pytest.fixture
async def amqp() -> AsyncIterator[AbstractChannel]:
    """A plain aio_pika channel, for what Krolik itself never does (raw publishes, peeks)."""
    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    async with connection:
        yield await connection.channel()


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    """Ready messages in a queue (passive declare: unacked ones are not counted)."""
    queue = await channel.declare_queue(name, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def stop_consuming(worker: Worker) -> None:
    """Close a worker's consumer channel as a lost connection would; its runs go on.

    Any message the worker had not acked goes back to the queue at once.
    """
    subscription = worker._subscription
    worker._subscription = None
    assert subscription is not None, "the worker was not consuming"
    await subscription.cancel()


async def count_tasks(store: TaskStore, status: str | None = None) -> int:
    assert isinstance(store, SqlTaskStore)
    stmt = select(func.count()).select_from(tasks)
    if status is not None:
        stmt = stmt.where(tasks.c.status == status)
    async with store.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())
