"""One contract, every implementation: ``any_store`` and ``any_broker`` are parametrized.

A test written against ``any_store`` runs on PostgreSQL (production) and on SQLite
(embedded mode); one against ``any_broker`` runs on RabbitMQ and on the in-process
broker. A test that passes on one and fails on the other found a bug in one of them.

The real services are requested lazily (``request.getfixturevalue``) for their own
parameter only, so the SQLite and memory variants run without PostgreSQL or RabbitMQ.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from krolik.broker.base import Broker
from krolik.broker.memory import MemoryBroker
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.store.base import TaskStore
from krolik.store.postgres import PostgresTaskStore
from krolik.store.sqlite import SqliteTaskStore
from tests.conftest import test_settings
from tests.contract.deployment import (
    MODES,
    Deployment,
    StartWorker,
    make_deployment,
    worker_starter,
)
from tests.contract.http import client, embedded_client, production_client  # noqa: F401

STORES = ["postgres", "sqlite"]
BROKERS = ["rabbitmq", "memory"]


@pytest.fixture(scope="session")
async def postgres_engine_store(pg_database: str) -> AsyncIterator[PostgresTaskStore]:
    """One production store (one connection pool) on this run's database."""
    store = PostgresTaskStore.from_settings(test_settings(pg_database, "contract").db)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def postgres_store(postgres_engine_store: PostgresTaskStore) -> PostgresTaskStore:
    """The production store, its tables emptied for the test."""
    async with postgres_engine_store.engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE krolik_outbox, krolik_attempts, krolik_deliveries, krolik_tasks, "
                "krolik_workers, krolik_schedules, krolik_schedule_ticks, "
                "krolik_api_keys, krolik_queues, krolik_queue_starts, krolik_handlers "
                "RESTART IDENTITY CASCADE"
            )
        )
    return postgres_engine_store


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to the head, copied for every test (migrating takes long)."""
    store = SqliteTaskStore(tmp_path_factory.mktemp("sqlite") / "template.sqlite3")
    await store.open()
    await store.close()
    return store.path


@pytest.fixture
async def sqlite_store(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    """The embedded store on a file of its own, opened as ``krolik dev`` opens it."""
    path = tmp_path / "krolik.sqlite3"
    shutil.copyfile(sqlite_template, path)
    store = SqliteTaskStore(path)
    await store.open()
    yield store
    await store.close()


@pytest.fixture(params=STORES, ids=STORES)
def any_store(request: pytest.FixtureRequest) -> TaskStore:
    store: TaskStore = request.getfixturevalue(f"{request.param}_store")
    return store


@pytest.fixture
async def rabbitmq_broker(
    make_broker: Callable[[], RabbitMQBroker],
) -> AsyncIterator[RabbitMQBroker]:
    """A connected RabbitMQ broker on this test's own exchange and queues (removed after)."""
    broker = make_broker()
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture
async def memory_broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker()
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture(params=BROKERS, ids=BROKERS)
def any_broker(request: pytest.FixtureRequest) -> Broker:
    broker: Broker = request.getfixturevalue(f"{request.param}_broker")
    return broker


@pytest.fixture(params=MODES, ids=MODES)
def deployment(request: pytest.FixtureRequest, run_id: str) -> Deployment:
    """The store and broker of one deployment mode (see ``deployment.py``)."""
    return make_deployment(request, run_id)


@pytest.fixture
async def start_worker(deployment: Deployment) -> AsyncIterator[StartWorker]:
    """Workers on the deployment's store and broker; all are stopped at the end."""
    async for factory in worker_starter(deployment):
        yield factory
