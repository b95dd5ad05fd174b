"""A deployment of Krolik for the contract tests: the store and broker of one mode.

* production: PostgreSQL store, RabbitMQ broker;
* embedded: SQLite store, in-process broker.

``deployment`` (in ``conftest.py``) is parametrized over both; ``start_worker`` starts
workers on it that count the deliveries they are done with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from krolik.broker.base import Broker, Delivery
from krolik.broker.memory import MemoryBroker
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.builtin_tasks import builtin_registry
from krolik.registry import Registry
from krolik.results.notices import ChangeNotices
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, Task
from krolik.worker import Worker
from tests.conftest import AMQP_URL, test_settings
from tests.support.amqp import publish_raw

MODES = ["production", "embedded"]


@dataclass
class Deployment:
    store: TaskStore
    broker: Broker
    settings: Settings

    @property
    def queue(self) -> str:
        return self.settings.default_queue

    async def ready(self, queue: str | None = None) -> int:
        """Messages waiting in a queue (not those a consumer holds)."""
        info = await self.broker.inspect_queue(queue or self.queue)
        return 0 if info is None else info.messages

    async def publish_raw(self, body: bytes) -> None:
        """Any body onto the default queue, as any client could put it there."""
        if isinstance(self.broker, MemoryBroker):
            await self.broker.publish_raw(self.queue, body)
            return
        assert isinstance(self.broker, RabbitMQBroker)
        await publish_raw(AMQP_URL, self.broker.topology, self.queue, body)

    async def enqueue(
        self, name: str, payloads: Sequence[Any], queue: str | None = None
    ) -> list[Task]:
        new = [NewTask(name=name, queue=queue or self.queue, payload=p) for p in payloads]
        return [enqueued.task for enqueued in await self.store.enqueue(new)]


def make_deployment(request: pytest.FixtureRequest, run_id: str) -> Deployment:
    """The store and the broker of one mode (the services of the other are not needed)."""
    if request.param == "production":
        return Deployment(
            request.getfixturevalue("postgres_store"),
            request.getfixturevalue("rabbitmq_broker"),
            request.getfixturevalue("settings"),
        )
    return Deployment(
        request.getfixturevalue("sqlite_store"),
        request.getfixturevalue("memory_broker"),
        test_settings("unused", run_id),
    )


class Traced(Worker):
    """A worker that counts the deliveries it is done with (acked, dead-lettered or given
    back): stopping it before would give back a message it was about to ack."""

    received = 0
    handled = 0

    async def _on_delivery(self, delivery: Delivery) -> None:
        self.received += 1
        try:
            await super()._on_delivery(delivery)
        finally:
            self.handled += 1

    @property
    def between_deliveries(self) -> bool:
        """Every delivery received so far is handled."""
        return self.received == self.handled


StartWorker = Callable[..., Awaitable[Traced]]


async def worker_starter(
    deployment: Deployment, store: TaskStore | None = None
) -> AsyncIterator[StartWorker]:
    """Workers on the deployment's store and broker; all are stopped at the end."""
    started: list[Traced] = []

    async def factory(registry: Registry | None = None, **kwargs: Any) -> Traced:
        kwargs.setdefault("observer", ChangeNotices(deployment.broker))  # as a node's has
        worker = Traced(
            store or deployment.store,
            deployment.broker,
            builtin_registry.merged(registry or Registry()),
            deployment.settings,
            **kwargs,
        )
        await worker.start()
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        if worker.accepting:
            await worker.stop(grace_seconds=1)
