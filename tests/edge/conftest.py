"""Fixtures for the edge tests: the real app (auth, rate limit, admission, body limit)
over the real PostgreSQL and RabbitMQ of ``tests/conftest.py``, API keys, a TCP proxy
to cut PostgreSQL away, and captured structured logs.

Apps are built with ``create_app(Node.build(test_settings(...), {Role.API}, ...))`` and run
inside their lifespan (``LifespanManager``), reached through ``httpx.ASGITransport``.
The transport is told not to re-raise app exceptions, so an unexpected 500 shows up
as a status code in an assertion message instead of as a crash of the test.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager

from krolik.access import hash_key, new_key
from krolik.api.app import create_app
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.log import configure_logging
from krolik.node import Node, Role
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.postgres import PostgresTaskStore
from tests.conftest import PG_HOST, PG_PORT, PG_USER, test_settings
from tests.support.proxy import TcpProxy
from tests.support.waiting import Condition, wait_until  # noqa: F401

BASE_URL = "http://krolik.test"
DB_PASSWORD = "s3cret-pw"
"""Sent in the URL of the proxied store; PostgreSQL's trust auth ignores it."""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_settings(
    pg_database: str, rabbitmq_available: None, run_id: str
) -> Callable[..., Settings]:
    """Settings like the ``settings`` fixture (same database, same RabbitMQ names)."""

    def factory(**overrides: Any) -> Settings:
        return test_settings(pg_database, run_id, **overrides)

    return factory


AppClient = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_client(
    store: TaskStore,
    make_broker: Callable[[], RabbitMQBroker],
    make_settings: Callable[..., Settings],
) -> AsyncIterator[AppClient]:
    """Start apps with their lifespans and give an httpx client on each.

    ``make_client(auth={...}, rate_limit={...}, api={...})`` takes settings overrides;
    ``the_store=`` puts another store behind the app, ``client=("10.0.0.1", 1)`` sets the
    caller's address, ``settings=`` gives complete settings. All are stopped at teardown.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            *,
            the_store: TaskStore | None = None,
            client: tuple[str, int] = ("127.0.0.1", 40000),
            settings: Settings | None = None,
            **overrides: Any,
        ) -> httpx.AsyncClient:
            app_settings = settings or make_settings(**overrides)
            broker = make_broker()
            await broker.connect()  # so /health/ready is ready from the first request
            app = create_app(
                Node.build(app_settings, {Role.API}, store=the_store or store, broker=broker)
            )
            manager = await stack.enter_async_context(LifespanManager(app))
            transport = httpx.ASGITransport(
                app=manager.app, client=client, raise_app_exceptions=False
            )
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30)
            )
            http.app = app  # type: ignore[attr-defined]
            return http

        yield factory


@dataclass(frozen=True)
class Key:
    name: str
    scope: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.secret)


MakeKey = Callable[[str], Awaitable[Key]]


@pytest.fixture
async def make_key(store: TaskStore, run_id: str) -> MakeKey:
    """Create an API key in the store (as ``krolik keys create`` does); names are unique."""
    numbers = itertools.count(1)

    async def factory(scope: str) -> Key:
        name = f"{scope}-{run_id}-{next(numbers)}"
        secret = new_key()
        await store.create_api_key(name, scope, hash_key(secret))
        return Key(name=name, scope=scope, secret=secret)

    return factory


@dataclass
class ProxiedStore:
    """A PostgreSQL store reached through a TCP proxy, with a password in its URL."""

    proxy: TcpProxy
    store: PostgresTaskStore
    url: str


@pytest.fixture
async def proxied_store(pg_database: str, rabbitmq_available: None) -> AsyncIterator[ProxiedStore]:
    proxy = TcpProxy(PG_HOST, PG_PORT)
    await proxy.start()
    url = f"postgresql+asyncpg://{PG_USER}:{DB_PASSWORD}@127.0.0.1:{proxy.port}/{pg_database}"
    from krolik.settings import DatabaseSettings

    the_store = PostgresTaskStore.from_settings(
        DatabaseSettings(url=url, pool_size=2, max_overflow=0, connect_timeout_seconds=2)
    )
    try:
        yield ProxiedStore(proxy=proxy, store=the_store, url=url)
    finally:
        await proxy.stop()
        await the_store.close()


@pytest.fixture
def captured_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Krolik's JSON logs (``configure_logging(json=True)``) written into a string."""
    stream = io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", stream)
        configure_logging(json=True, level="DEBUG")
    # No caching: a logger used here must not keep writing into this stream later.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"
