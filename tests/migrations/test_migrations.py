"""The migrations produce exactly the schema of ``krolik.store.tables``, both ways."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from krolik.migrate import alembic_config, upgrade
from krolik.store.tables import metadata
from tests.conftest import PG_HOST, PG_PORT, PG_USER, pg_url, service_missing

pytestmark = pytest.mark.integration


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def fresh_url() -> Iterator[str]:
    """An empty database of its own, dropped afterwards."""
    name = f"krolik_migrations_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    try:
        yield pg_url(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _compare(sync_conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        sync_conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(context, metadata)


def _inspect(sync_conn: Connection) -> dict[str, Any]:
    inspector = inspect(sync_conn)
    context = MigrationContext.configure(sync_conn)
    return {
        "tables": set(inspector.get_table_names()),
        "revision": context.get_current_revision(),
    }


async def _run(url: str, func: Any) -> Any:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(func)
    finally:
        await engine.dispose()


def diff(url: str) -> list[Any]:
    return asyncio.run(_run(url, _compare))


def state(url: str) -> dict[str, Any]:
    return asyncio.run(_run(url, _inspect))


def head() -> str:
    script = ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://unused/x"))
    revision = script.get_current_head()
    assert revision is not None
    return revision


def test_upgrade_produces_the_tables_exactly(fresh_url):
    assert state(fresh_url)["tables"] == set()
    upgrade(fresh_url)
    now = state(fresh_url)
    assert now["revision"] == head()
    assert now["tables"] == set(metadata.tables) | {"alembic_version"}
    assert {"krolik_tasks", "krolik_outbox"} <= now["tables"]
    assert diff(fresh_url) == []


def test_upgrade_is_idempotent(fresh_url):
    upgrade(fresh_url)
    upgrade(fresh_url)
    assert state(fresh_url)["revision"] == head()
    assert diff(fresh_url) == []


def test_downgrade_to_base_and_upgrade_again(fresh_url):
    upgrade(fresh_url)
    command.downgrade(alembic_config(fresh_url), "base")
    after_down = state(fresh_url)
    assert after_down["revision"] is None
    assert after_down["tables"] <= {"alembic_version"}
    # everything the metadata wants is missing again
    missing = {op[1].name for op in diff(fresh_url) if op[0] == "add_table"}
    assert missing == set(metadata.tables)

    upgrade(fresh_url)
    assert state(fresh_url)["revision"] == head()
    assert diff(fresh_url) == []


def test_the_comparison_does_notice_a_difference(fresh_url):
    """Guard against a comparison that can never fail."""
    upgrade(fresh_url)

    async def drop_index() -> None:
        engine = create_async_engine(fresh_url, poolclass=pool.NullPool)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP INDEX ix_krolik_tasks_name_id")
                await conn.exec_driver_sql("ALTER TABLE krolik_outbox ADD COLUMN extra text")
        finally:
            await engine.dispose()

    asyncio.run(drop_index())
    kinds = {op[0] if isinstance(op, tuple) else op[0][0] for op in diff(fresh_url)}
    assert {"add_index", "remove_column"} <= kinds
