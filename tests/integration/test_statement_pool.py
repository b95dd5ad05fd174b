"""The PostgreSQL store's own pool of raw asyncpg connections, against the real server:
reuse, its bound, what becomes of a connection after each kind of failure, closing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from krolik.errors import StoreUnavailable
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import NewTask
from krolik.store.statement_pool import StatementPool, set_json_codecs
from tests.conftest import PG_HOST, PG_PORT, PG_USER, test_settings

MakePool = Callable[..., StatementPool]


@pytest.fixture
async def admin(pg_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=pg_database
    )
    yield connection
    await connection.close()


@pytest.fixture
async def make_pool(pg_database: str) -> AsyncIterator[MakePool]:
    """Pools whose connections carry an application name of their own, to find them."""
    pools: list[StatementPool] = []
    name = f"krolik-pool-test-{uuid.uuid4().hex[:8]}"

    def factory(max_size: int = 4, wait_timeout: float = 5.0) -> StatementPool:
        async def connect() -> asyncpg.Connection:
            connection = await asyncpg.connect(
                host=PG_HOST,
                port=PG_PORT,
                user=PG_USER,
                database=pg_database,
                server_settings={"application_name": name},
            )
            await set_json_codecs(connection)
            return connection

        pool = StatementPool(connect, max_size=max_size, wait_timeout=wait_timeout)
        pool.application_name = name  # type: ignore[attr-defined]
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close()


async def _backends(admin: asyncpg.Connection, pool: StatementPool) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        pool.application_name,  # type: ignore[attr-defined]
    )
    return sorted(row["pid"] for row in rows)


async def test_one_caller_at_a_time_reuses_one_connection(
    make_pool: MakePool, admin: asyncpg.Connection
):
    pool = make_pool()
    pids = {(await pool.fetch("SELECT pg_backend_pid() AS pid"))[0]["pid"] for _ in range(20)}
    assert len(pids) == 1
    assert pool.size == 1
    assert await _backends(admin, pool) == sorted(pids)


async def test_concurrent_callers_share_at_most_max_size_connections(make_pool: MakePool):
    pool = make_pool(max_size=3)
    rows = await asyncio.gather(
        *(pool.fetch("SELECT pg_backend_pid() AS pid, pg_sleep(0.05)") for _ in range(12))
    )
    assert len({row[0]["pid"] for row in rows}) == 3
    assert pool.size == 3


async def test_a_refused_statement_keeps_its_connection(make_pool: MakePool):
    pool = make_pool()
    (first,) = await pool.fetch("SELECT pg_backend_pid() AS pid")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await pool.fetch("SELECT 1 / 0")
    (again,) = await pool.fetch("SELECT pg_backend_pid() AS pid")
    assert again["pid"] == first["pid"]
    assert pool.size == 1


async def test_a_cancelled_statement_closes_its_connection_only(
    make_pool: MakePool, admin: asyncpg.Connection
):
    pool = make_pool()
    await asyncio.gather(*(pool.fetch("SELECT pg_sleep(0.05)") for _ in range(2)))
    assert pool.size == 2
    sleeping = asyncio.create_task(pool.fetch("SELECT pg_backend_pid() AS pid, pg_sleep(30)"))
    while len(await _backends(admin, pool)) < 2 or pool.size < 2:
        await asyncio.sleep(0.01)
    (idle,) = await pool.fetch("SELECT pg_backend_pid() AS pid")  # the other one
    await asyncio.sleep(0.05)  # let the sleeping statement reach the server
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    assert pool.size == 1  # the idle connection stays: a cancel says nothing of the server
    (again,) = await pool.fetch("SELECT pg_backend_pid() AS pid")
    assert again["pid"] == idle["pid"]


async def test_after_the_server_drops_a_connection_the_next_statement_reconnects(
    make_pool: MakePool, admin: asyncpg.Connection
):
    pool = make_pool()
    await asyncio.gather(*(pool.fetch("SELECT pg_sleep(0.05)") for _ in range(3)))
    assert pool.size == 3
    for pid in await _backends(admin, pool):
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    failures = 0
    for _ in range(3):
        try:
            await pool.fetch("SELECT 1")
            break
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            asyncpg.AdminShutdownError,
            OSError,
        ):
            failures += 1
    # The first statement on a dead connection fails; the idle ones go with it.
    assert failures == 1
    assert pool.size == 1
    assert (await pool.fetch("SELECT 8 AS n"))[0]["n"] == 8


async def test_a_caller_waits_for_a_free_connection_then_times_out(make_pool: MakePool):
    pool = make_pool(max_size=1, wait_timeout=0.2)
    busy = asyncio.create_task(pool.fetch("SELECT pg_sleep(1)"))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await pool.fetch("SELECT 1")
    await busy
    assert (await pool.fetch("SELECT 9 AS n"))[0]["n"] == 9
    assert pool.size == 1


async def test_a_waiting_caller_gets_the_released_connection(make_pool: MakePool):
    pool = make_pool(max_size=1)
    busy = asyncio.create_task(pool.fetch("SELECT pg_backend_pid() AS pid, pg_sleep(0.1)"))
    await asyncio.sleep(0.02)
    (waited,) = await pool.fetch("SELECT pg_backend_pid() AS pid")
    (first,) = await busy
    assert waited["pid"] == first["pid"]


async def test_close_closes_idle_and_returning_connections_and_stays_usable(
    make_pool: MakePool, admin: asyncpg.Connection
):
    """As ``engine.dispose()``: an app whose lifespan runs again opens new connections."""
    pool = make_pool(max_size=2)
    (idle,) = await pool.fetch("SELECT pg_backend_pid() AS pid")
    running = asyncio.create_task(pool.fetch("SELECT pg_backend_pid() AS pid, pg_sleep(0.2)"))
    await asyncio.sleep(0.05)
    await pool.close()
    (ran,) = await running  # finishes; its connection is closed on the way back
    assert pool.size == 0
    for _ in range(100):
        if not await _backends(admin, pool):
            break
        await asyncio.sleep(0.02)
    assert await _backends(admin, pool) == []
    (fresh,) = await pool.fetch("SELECT pg_backend_pid() AS pid")
    assert fresh["pid"] not in {idle["pid"], ran["pid"]}
    assert pool.size == 1


async def test_json_columns_are_decoded(make_pool: MakePool):
    pool = make_pool()
    (row,) = await pool.fetch(
        """SELECT '{"a": [1, 2.5, null]}'::jsonb AS b, '"text"'::json AS j, $1::jsonb AS p""",
        '{"from": "a parameter"}',
    )
    assert row["b"] == {"a": [1, 2.5, None]}
    assert row["j"] == "text"
    assert row["p"] == {"from": "a parameter"}


async def test_the_store_answers_unavailable_for_a_dropped_connection_then_reconnects(
    pg_database: str, admin: asyncpg.Connection, run_id: str
):
    """A PostgreSQL restart drops idle connections: the next hot statement on one is a
    StoreUnavailable (503, retried), never a driver error, and the one after works."""
    store = PostgresTaskStore.from_settings(test_settings(pg_database, run_id).db)
    new = [NewTask(name="echo", queue="default", payload=1)]
    try:
        await asyncio.gather(*(store.enqueue(new) for _ in range(3)))
        pids = [connection.get_server_pid() for connection in store.statements._idle]
        assert pids
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        outcomes: list[str] = []
        for _ in range(2):
            try:
                await store.enqueue(new)
                outcomes.append("ok")
            except StoreUnavailable:
                outcomes.append("unavailable")
        assert outcomes[-1] == "ok", outcomes
        assert store.statements.size == 1
    finally:
        await store.close()
