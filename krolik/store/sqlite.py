"""The SQLite store: the source of truth of the embedded mode (``krolik dev``).

The same statements as PostgreSQL (see ``sql.py``); SQLite has one writer at a
time, so the store keeps one connection and transactions take turns on it. WAL
with ``synchronous=NORMAL`` keeps every committed transaction across a crash of
the process (kill -9 included).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import ColumnElement, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.sql.functions import Function

from krolik.migrate import upgrade_async
from krolik.store.sql import SqlTaskStore
from krolik.store.tables import Timestamp, tasks


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


NOW_FUNCTION = "krolik_now"
LATER_FUNCTION = "krolik_later"
STORAGE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
"""How SQLAlchemy stores a DateTime in SQLite: text that sorts as time does."""


def _now_text() -> str:
    return datetime.now(UTC).strftime(STORAGE_FORMAT)


def _later_text(seconds: float | None) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds or 0)).strftime(STORAGE_FORMAT)


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
        dbapi_connection.create_function(NOW_FUNCTION, 0, _now_text)
        dbapi_connection.create_function(LATER_FUNCTION, 1, _later_text)

    return engine


class SqliteTaskStore(SqlTaskStore):
    """One file, one writer; migrated to the current schema when opened.

    Times are SQLite functions of the connection (``krolik_now``, ``krolik_later``),
    evaluated when the statement runs: transactions take turns on one connection, and a
    lease computed before the wait for it would be short by that wait.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        super().__init__(create_engine(self.path))

    def sibling(self) -> SqliteTaskStore:
        return SqliteTaskStore(self.path)

    def _now(self) -> ColumnElement[datetime]:
        return Function(NOW_FUNCTION, type_=Timestamp)

    def _clock(self) -> ColumnElement[datetime]:
        return Function(NOW_FUNCTION, type_=Timestamp)

    def _later_by(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        return Function(LATER_FUNCTION, seconds, type_=Timestamp)

    def _ago(self, seconds: float) -> ColumnElement[datetime]:
        return self._later(-seconds)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await upgrade_async(sqlite_url(self.path))

    def _insert_task(self) -> Any:
        return sqlite_insert(tasks)
