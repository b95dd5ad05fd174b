"""The SQLite store: the source of truth of the embedded mode (``krolik dev``).

The same statements as PostgreSQL (see ``sql.py``); SQLite has one writer at a
time, so the store keeps one connection and transactions take turns on it. WAL
with ``synchronous=NORMAL`` keeps every committed transaction across a crash of
the process (kill -9 included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from krolik.migrate import upgrade_async
from krolik.store.sql import SqlTaskStore
from krolik.store.tables import tasks


def sqlite_url(path: Path | str) -> str:
    return f"sqlite+aiosqlite:///{Path(path)}"


def _json_dumps(value: Any) -> bytes:
    """JSON as UTF-8 bytes, which SQLite stores as a BLOB, exactly as given.

    The payload and result columns are declared ``JSON``, a type name that gives
    them NUMERIC affinity: stored as text, a bare number such as ``42`` or ``1.0``
    would become an INTEGER (or REAL) that no longer reads back as JSON. SQLite
    never converts a BLOB.
    """
    return orjson.dumps(value)


def _json_loads(value: bytes | str | float) -> Any:
    if isinstance(value, int | float):  # a bare number written as text by an older version
        return value
    return orjson.loads(value)


def create_engine(path: Path | str) -> AsyncEngine:
    engine = create_async_engine(
        sqlite_url(path),
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return engine


class SqliteTaskStore(SqlTaskStore):
    """One file, one writer; migrated to the current schema when opened."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        super().__init__(create_engine(self.path))

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await upgrade_async(sqlite_url(self.path))

    def _insert_task(self) -> Any:
        return sqlite_insert(tasks)
