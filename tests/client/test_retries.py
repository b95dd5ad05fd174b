"""Retries that never duplicate: a dropped connection after the server committed, a 429
with its Retry-After; and the errors that are not retried."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from krolik_client import (
    AsyncClient,
    Forbidden,
    RateLimited,
    Retries,
    ServerUnavailable,
    Unauthorized,
)
from krolik_client.retrying import parse_retry_after

from krolik.access import hash_key, new_key
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.settings import Settings
from krolik.store.base import TaskStore
from tests.client.conftest import BASE_URL, QUICK_RETRIES
from tests.client.handlers import nap
from tests.conftest import test_settings


class CutOnce:
    """A TCP proxy to the API that drops the first connection whose answer starts to come
    back, before forwarding any of it: the server has done the request (and committed),
    the client never hears of it. Later connections pass untouched."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self.submits = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        def abort() -> None:
            writer.transport.abort()
            up_writer.transport.abort()

        async def requests() -> None:
            while data := await reader.read(65536):
                self.submits += data.count(b"POST /tasks/ ")
                up_writer.write(data)
                await up_writer.drain()

        async def answers() -> None:
            while data := await up_reader.read(65536):
                if self.cuts == 0:
                    self.cuts += 1
                    abort()
                    return
                writer.write(data)
                await writer.drain()

        for pipe in (requests(), answers()):
            task = asyncio.create_task(self._guard(pipe, abort))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _guard(pipe: Awaitable[None], abort: Callable[[], None]) -> None:
        try:
            await pipe
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            abort()


@pytest.fixture
async def cut_once(served: str) -> AsyncIterator[CutOnce]:
    proxy = CutOnce(int(served.rsplit(":", 1)[1]))
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_submit_retried_after_the_commit_returns_the_same_task(
    cut_once: CutOnce,
) -> None:
    async with AsyncClient(f"http://127.0.0.1:{cut_once.port}", retries=QUICK_RETRIES) as client:
        handle = await client.submit(nap, 0.0, delay=60)
        tasks = [task async for task in client.list()]
    assert cut_once.cuts == 1
    assert cut_once.submits == 2, "the client did not send the submit again"
    assert not handle.created, "the second try made a task of its own"
    assert [task.id for task in tasks] == [handle.id]


async def test_a_cancel_is_not_sent_again_after_a_dropped_answer(cut_once: CutOnce) -> None:
    async with AsyncClient(f"http://127.0.0.1:{cut_once.port}", retries=QUICK_RETRIES) as client:
        cut_once.cuts = 1  # let the submit through
        handle = await client.submit(nap, 0.0, delay=60)
        cut_once.cuts = 0
        with pytest.raises(ServerUnavailable, match="got no answer"):
            await client.cancel(handle)
        assert (await client.get(handle)).status == "cancelled"  # done once, by the first


# -- 429 and the API keys: the production app with auth or a rate limit -----------------
@pytest.fixture
async def make_app_client(
    pg_database: str,
    rabbitmq_available: None,
    run_id: str,
    store: TaskStore,
    make_broker: Callable[[], RabbitMQBroker],
    make_api: Callable[..., Awaitable[httpx.AsyncClient]],
) -> AsyncIterator[Callable[..., Awaitable[AsyncClient]]]:
    """``AsyncClient``s on apps of the given settings overrides (``api_key=`` to send)."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            *, api_key: str | None = None, retries: int | Retries = QUICK_RETRIES, **overrides: Any
        ) -> AsyncClient:
            settings: Settings = test_settings(pg_database, run_id, **overrides)
            http = await make_api(settings, store=store, broker=make_broker())
            transport = httpx.ASGITransport(app=http.app)  # type: ignore[attr-defined]
            client = AsyncClient(BASE_URL, api_key, transport=transport, retries=retries)
            return await stack.enter_async_context(client)

        yield factory


async def test_a_429_is_retried_after_its_retry_after(
    make_app_client: Callable[..., Awaitable[AsyncClient]],
) -> None:
    client = await make_app_client(rate_limit={"limit": "3/second"})
    started = time.monotonic()
    for _ in range(5):
        await client.queues()
    assert time.monotonic() - started >= 0.9, "the limit was not waited for"


async def test_a_429_past_the_retries_raises_rate_limited(
    make_app_client: Callable[..., Awaitable[AsyncClient]],
) -> None:
    client = await make_app_client(rate_limit={"limit": "2/second"}, retries=0)
    await client.queues()
    await client.queues()
    with pytest.raises(RateLimited, match="rate limit exceeded") as limited:
        await client.queues()
    assert (limited.value.retry_after or 0) >= 1


async def test_api_keys_unauthorized_and_forbidden(
    make_app_client: Callable[..., Awaitable[AsyncClient]], store: TaskStore, run_id: str
) -> None:
    secret = new_key()
    await store.create_api_key(f"reader-{run_id}", "read", hash_key(secret))
    anonymous = await make_app_client(auth={"enabled": True})
    with pytest.raises(Unauthorized):
        await anonymous.queues()
    reader = await make_app_client(auth={"enabled": True}, api_key=secret)
    assert isinstance(await reader.queues(), list)
    with pytest.raises(Forbidden, match="this needs submit"):
        await reader.submit(nap, 0.0)


async def test_the_api_key_comes_from_the_environment(
    make_app_client: Callable[..., Awaitable[AsyncClient]],
    store: TaskStore,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = new_key()
    await store.create_api_key(f"env-{run_id}", "submit", hash_key(secret))
    monkeypatch.setenv("KROLIK_API_KEY", secret)
    client = await make_app_client(auth={"enabled": True})
    assert (await client.submit(nap, 0.0, delay=60)).created


def test_retry_after_in_seconds_or_as_a_date() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("5") == 5
    assert 25 < (parse_retry_after(soon) or 0) <= 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert parse_retry_after("soon") is None
