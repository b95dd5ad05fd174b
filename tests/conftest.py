"""Fixtures for every layer: real PostgreSQL and RabbitMQ, isolated per test run.

Each run gets its own database (created, migrated, dropped) and each test its own
RabbitMQ exchange and queues, named by a fresh uuid. A missing service skips the
tests that need it, unless ``CI`` is set: then it fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text

from krolik.api.app import create_app
from krolik.broker.base import Broker
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.broker.topology import Topology
from krolik.builtin_tasks import builtin_registry
from krolik.migrate import upgrade_async
from krolik.node import Node, Role
from krolik.registry import Registry
from krolik.relay import OutboxRelay
from krolik.results.notices import ChangeNotices
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import Task
from krolik.worker import Worker

IN_CI = bool(os.environ.get("CI"))
PG_HOST = os.environ.get("KROLIK_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("KROLIK_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("KROLIK_TEST_PG_USER", "postgres")
AMQP_URL = os.environ.get("KROLIK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BEHIND_PGBOUNCER = bool(os.environ.get("KROLIK_TEST_PGBOUNCER"))
"""KROLIK_TEST_PG_PORT is a PgBouncer in transaction mode (tests/cluster/test_pgbouncer.py)."""


@pytest.fixture(autouse=True)
def _restore_garbage_collector() -> Iterator[None]:
    """Apps freeze the heap and space out GC passes at start-up; a test suite starts
    hundreds of them, so each test ends with the collector as it found it."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


ALLOWED_CI_SKIPS: dict[str, str] = {
    "Docker Compose v2 is not installed": (
        "no Docker engine, and no Compose v2 from Debian's packages or PyPI on the CI machine; "
        "the compose files are checked against the compose-spec schema instead"
    ),
}
"""Skip reasons CI accepts (a reason starting with a key), and why. Under ``CI`` any other
skip fails its test: a test that never runs in CI checks nothing. See CONTRIBUTING.md."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if not any(reason.startswith(allowed) for allowed in ALLOWED_CI_SKIPS):
            report.outcome = "failed"
            report.longrepr = (
                f"skipped in CI ({reason!r}); install what it needs in .ci/run, or add the "
                "reason to ALLOWED_CI_SKIPS in tests/conftest.py with why it cannot run there"
            )
    return report


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def service_missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


def pg_url(database: str, host: str = PG_HOST, port: int = PG_PORT) -> str:
    return f"postgresql+asyncpg://{PG_USER}@{host}:{port}/{database}"


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str]:
    """A freshly migrated database for this test run; dropped at the end."""
    async with new_database("krolik_test", migrate=True) as name:
        yield name


@contextlib.asynccontextmanager
async def new_database(prefix: str, *, migrate: bool) -> AsyncIterator[str]:
    """A database of its own, migrated or left empty; dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
        )
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        if migrate:
            await upgrade_async(pg_url(name))
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def rabbitmq_available() -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:
        service_missing(f"RabbitMQ is not reachable at {AMQP_URL}: {exc}")
    await connection.close()


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


WEBHOOK_KEY_ID = "test"
WEBHOOK_SECRET = "test-webhook-secret"


def test_settings(database: str, run_id: str, **overrides: Any) -> Settings:
    """Settings with short timings, so leases, retries and polls play out in a test."""
    values: dict[str, Any] = {
        "db": {"url": pg_url(database), "pool_size": 5, "pgbouncer": BEHIND_PGBOUNCER},
        "rabbitmq": {
            "url": AMQP_URL,
            "queue_name": f"krolik_test_{run_id}",
            "exchange_name": f"krolik_test_{run_id}",
            "routing_key": f"krolik.test.{run_id}",
            "queue_type": "classic",
            "publish_timeout_seconds": 3,
        },
        "worker": {
            "concurrency": 4,
            "lease_seconds": 2,
            "heartbeat_seconds": 0.3,
            "shutdown_grace_seconds": 5,
        },
        "retry": {
            "default_max_attempts": 3,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.2,
        },
        "relay": {"poll_seconds": 0.05, "claim_seconds": 2},
        "maintenance": {"rescue_interval_seconds": 0.2, "redispatch_after_seconds": 60},
        "scheduler": {"poll_seconds": 0.1},
        # Webhooks go to receivers the tests run on 127.0.0.1, signed with a known key,
        # and come back quickly after a failed try.
        "webhooks": {
            "allowed_hosts": ["127.0.0.1/32"],
            "signing_keys": {WEBHOOK_KEY_ID: WEBHOOK_SECRET},
            "poll_seconds": 0.2,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.2,
        },
    }
    for section, value in overrides.items():
        if isinstance(value, dict):
            values[section] = {**values.get(section, {}), **value}
        else:
            values[section] = value
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def settings(pg_database: str, rabbitmq_available: None, run_id: str) -> Settings:
    return test_settings(pg_database, run_id)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[PostgresTaskStore]:
    the_store = PostgresTaskStore.from_settings(settings.db)
    async with the_store.engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE krolik_outbox, krolik_tasks, krolik_workers, krolik_schedules, "
                "krolik_queues, krolik_handlers RESTART IDENTITY CASCADE"
            )
        )
    yield the_store
    await the_store.close()


@pytest.fixture
async def make_broker(settings: Settings) -> AsyncIterator[Callable[[], RabbitMQBroker]]:
    """Brokers with their own connections, as separate processes would have."""
    made: list[RabbitMQBroker] = []

    def factory() -> RabbitMQBroker:
        broker = RabbitMQBroker(
            settings.rabbitmq, Topology.from_settings(settings.rabbitmq, settings.default_queue)
        )
        made.append(broker)
        return broker

    yield factory
    await close_and_delete(made, settings)


async def close_and_delete(brokers: list[RabbitMQBroker], settings: Settings) -> None:
    """Close test brokers, then delete every queue they declared and the exchanges."""
    names: set[str] = set()
    for broker in brokers:
        names |= broker.queue_names
        with contextlib.suppress(Exception):
            await broker.close()
    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
        topology = Topology.from_settings(settings.rabbitmq, settings.default_queue)
        for exchange in (
            topology.exchange,
            topology.dead_letter_exchange,
            topology.notice_exchange,
        ):
            await channel.exchange_delete(exchange)


@pytest.fixture
async def broker(make_broker: Callable[[], RabbitMQBroker]) -> RabbitMQBroker:
    the_broker = make_broker()
    await the_broker.connect()
    return the_broker


@pytest.fixture
async def relay(
    store: TaskStore, broker: RabbitMQBroker, settings: Settings
) -> AsyncIterator[OutboxRelay]:
    the_relay = OutboxRelay(store, broker, settings.relay)
    the_relay.start()
    yield the_relay
    await the_relay.stop()


@pytest.fixture
async def make_worker(
    store: TaskStore, settings: Settings, make_broker: Callable[[], RabbitMQBroker]
) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Start workers, each with its own broker connection; all are stopped at the end."""
    started: list[Worker] = []

    async def factory(registry: Registry | None = None, **kwargs: Any) -> Worker:
        broker = make_broker()
        kwargs.setdefault("observer", ChangeNotices(broker))  # as a node's worker has
        worker = Worker(
            store,
            broker,
            builtin_registry.merged(registry or Registry()),
            settings,
            **kwargs,
        )
        await worker.start()
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        if worker.accepting:
            await worker.stop(grace_seconds=1)


async def wait_for_task(
    store: TaskStore,
    task_id: int,
    predicate: Callable[[Task], bool] | TaskStatus,
    timeout: float = 10.0,
) -> Task:
    """Wait until the task satisfies ``predicate`` (or has that status); fail on timeout."""
    check = (lambda t: t.status is predicate) if isinstance(predicate, TaskStatus) else predicate
    deadline = asyncio.get_running_loop().time() + timeout
    last: Task | None = None
    while asyncio.get_running_loop().time() < deadline:
        last = await store.get(task_id)
        if last is not None and check(last):
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} did not reach the expected state; last seen: {last}")


@pytest.fixture
async def api(
    settings: Settings, store: TaskStore, make_broker: Callable[[], RabbitMQBroker]
) -> AsyncIterator[Any]:
    """An httpx client on the real app (its relay included), started with its lifespan."""
    app = create_app(Node.build(settings, {Role.API}, store=store, broker=make_broker()))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://krolik.test"
        ) as client,
    ):
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def make_api(
    store: TaskStore, make_broker: Callable[[], RabbitMQBroker]
) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """httpx clients on apps built from the given settings/store/broker, lifespan included.

    It depends on ``store`` and ``make_broker`` so that the apps (and their relays) stop
    before those are closed; a store given here from elsewhere must outlive it too.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            app_settings: Settings, *, store: TaskStore | None = None, broker: Broker | None = None
        ) -> httpx.AsyncClient:
            app = create_app(Node.build(app_settings, {Role.API}, store=store, broker=broker))
            manager = await stack.enter_async_context(LifespanManager(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=manager.app), base_url="http://krolik.test"
                )
            )
            client.app = app  # type: ignore[attr-defined]
            return client

        yield factory
