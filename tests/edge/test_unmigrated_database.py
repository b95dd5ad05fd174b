"""A database where ``krolik migrate`` was never run: the API is not ready and answers
503 (never 500), and the log tells the operator what is missing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.errors import StoreUnavailable
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import NewTask
from tests.conftest import new_database, test_settings


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A database with no tables at all."""
    async with new_database("krolik_empty", migrate=False) as name:
        yield name


async def test_the_store_says_to_run_migrate(empty_database: str, run_id: str) -> None:
    store = PostgresTaskStore.from_settings(test_settings(empty_database, run_id).db)
    try:
        with pytest.raises(StoreUnavailable, match="run `krolik migrate`"):
            await store.ping()
        with pytest.raises(StoreUnavailable, match="run `krolik migrate`"):
            await store.enqueue([NewTask(name="echo", queue="default", payload=1)])
        with pytest.raises(StoreUnavailable, match="run `krolik migrate`"):
            await store.claim_outbox(10, 30)
    finally:
        await store.close()


async def test_the_api_is_not_ready_and_answers_503(
    empty_database: str,
    run_id: str,
    make_api: Callable[..., Awaitable[httpx.AsyncClient]],
    make_broker: Callable[[], RabbitMQBroker],
) -> None:
    # The fixture's broker (same run id) deletes the test's queues afterwards.
    api = await make_api(test_settings(empty_database, run_id), broker=make_broker())
    ready = await api.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unavailable"

    created = await api.post("/tasks/", json={"payload": "x"})
    assert created.status_code == 503, created.text
    assert created.headers["Retry-After"]
    assert "unavailable" in created.json()["detail"]

    read = await api.get("/tasks/1")
    assert read.status_code == 503, read.text
