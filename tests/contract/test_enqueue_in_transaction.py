"""``krolik.enqueue`` on the application's own connection (asyncpg, or a SQLAlchemy
session): the task exists if and only if the application's transaction commits, and
then the relay publishes it and a worker runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from krolik import enqueue, enqueue_many
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from tests.contract.http import wait_for


@pytest.fixture
async def app_conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """The application's own connection to the database Krolik uses."""
    url = settings.db.url.get_secret_value().replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    yield conn
    await conn.close()


async def absent(client: httpx.AsyncClient, task_id: int) -> bool:
    return (await client.get(f"/tasks/{task_id}")).status_code == 404


async def test_a_task_enqueued_in_a_transaction_that_commits_runs(
    production_client: httpx.AsyncClient, app_conn: asyncpg.Connection
) -> None:
    async with app_conn.transaction():
        await app_conn.execute("CREATE TEMP TABLE orders (id int)")
        await app_conn.execute("INSERT INTO orders VALUES (42)")
        task = await enqueue(app_conn, "echo", {"order": 42}, priority=2)
        assert (task.status, task.payload, task.priority) == (TaskStatus.PENDING, {"order": 42}, 2)
        assert await absent(production_client, task.id)  # not before the commit
    done = await wait_for(production_client, task.id, "done")
    assert done["result"] == {"order": 42}


async def test_a_transaction_rolled_back_leaves_no_task(
    production_client: httpx.AsyncClient, app_conn: asyncpg.Connection
) -> None:
    transaction = app_conn.transaction()
    await transaction.start()
    [first, second] = await enqueue_many(app_conn, "echo", [1, 2])
    await transaction.rollback()
    assert await absent(production_client, first.id)
    assert await absent(production_client, second.id)
    outbox = await app_conn.fetchval(
        "SELECT count(*) FROM krolik_outbox WHERE task_id = ANY($1::bigint[])",
        [first.id, second.id],
    )
    assert outbox == 0


async def test_a_sqlalchemy_session_enqueues_in_its_transaction(
    production_client: httpx.AsyncClient, settings: Settings
) -> None:
    engine = create_async_engine(settings.db.url.get_secret_value())
    try:
        async with AsyncSession(engine) as session:
            await session.begin()
            dropped = await enqueue(session, "echo", "dropped")
            await session.rollback()
            async with session.begin():
                await session.execute(text("SELECT 1"))
                kept = await enqueue(session, "echo", "kept", delay_seconds=0.1)
        async with engine.connect() as conn, conn.begin():
            also = await enqueue(conn, "echo", ["also", "kept"])
    finally:
        await engine.dispose()
    assert await absent(production_client, dropped.id)
    assert (await wait_for(production_client, kept.id, "done"))["result"] == "kept"
    assert (await wait_for(production_client, also.id, "done"))["result"] == ["also", "kept"]


async def test_a_task_post_tasks_would_refuse_is_refused_with_its_message(
    store: TaskStore, app_conn: asyncpg.Connection
) -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        await enqueue(app_conn, "echo", 1, max_attempts=0)
    with pytest.raises(ValueError, match="give run_at or delay_seconds, not both"):
        await enqueue(app_conn, "echo", 1, delay_seconds=1, run_at=datetime.now(UTC))
    with pytest.raises(TypeError, match="asyncpg connection or a SQLAlchemy"):
        await enqueue(object(), "echo", 1)
    assert await app_conn.fetchval("SELECT count(*) FROM krolik_tasks") == 0
