"""What the two databases do differently in the statements they share: time, and upserts.

Times come from the database, never from the Python process, so that a lease means the
same on every machine and is counted from when the statement runs. Conditions compare
with one value for the whole statement (``now``), so that a comparison with an indexed
column bounds the index scan; what is recorded is the moment of recording (``clock``).

On SQLite, whose own clock has millisecond text, the time is a function of the
connection (``krolik_now``, ``krolik_later``) written in SQLAlchemy's storage format, so
stored times compare as text exactly as they compare as times.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, func
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.functions import Function
from sqlalchemy.types import Float

from krolik.store.tables import Timestamp


class Dialect(ABC):
    @abstractmethod
    def now(self) -> ColumnElement[datetime]:
        """The current time for conditions: one value for the whole statement."""

    @abstractmethod
    def clock(self) -> ColumnElement[datetime]:
        """The current time to record (a finish time is the moment of finishing)."""

    @abstractmethod
    def later_by(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        """``seconds`` after ``clock()``, to record (leases, retry times); NULL seconds
        give NULL."""

    def later(self, seconds: float) -> ColumnElement[datetime]:
        return self.later_by(bindparam(None, float(seconds), type_=Float))

    @abstractmethod
    def ago(self, seconds: float) -> ColumnElement[datetime]:
        """``seconds`` before ``now()``, for conditions."""

    @abstractmethod
    def insert(self, table: Table) -> Any:
        """An INSERT that knows ``on_conflict_do_nothing``."""

    @abstractmethod
    def slice_of_now(self, seconds: float) -> ColumnElement[datetime]:
        """The start of the ``seconds``-long slice of time (since the epoch) that
        ``now()`` falls in."""

    def statement_time_limit(self, seconds: float) -> str | None:
        """A statement that cancels the transaction's next statements past ``seconds``
        (so their row locks are held no longer), or None where there is none."""
        return None


class PostgresDialect(Dialect):
    def statement_time_limit(self, seconds: float) -> str | None:
        return f"SET LOCAL statement_timeout = {max(1, round(seconds * 1000))}"

    def now(self) -> ColumnElement[datetime]:
        return func.now()

    def slice_of_now(self, seconds: float) -> ColumnElement[datetime]:
        length = bindparam(None, float(seconds), type_=Float)
        return func.to_timestamp(func.floor(func.extract("epoch", func.now()) / length) * length)

    def clock(self) -> ColumnElement[datetime]:
        return func.clock_timestamp()

    def later_by(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        return func.clock_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)

    def ago(self, seconds: float) -> ColumnElement[datetime]:
        return func.now() - func.make_interval(
            0, 0, 0, 0, 0, 0, bindparam(None, float(seconds), type_=Float)
        )

    def insert(self, table: Table) -> Any:
        return postgres_insert(table)


SQLITE_NOW = "krolik_now"
SQLITE_LATER = "krolik_later"
SQLITE_SLICE = "krolik_slice"
SQLITE_STORAGE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
"""How SQLAlchemy stores a DateTime in SQLite: text that sorts as time does."""


def _sqlite_now() -> str:
    return datetime.now(UTC).strftime(SQLITE_STORAGE_FORMAT)


def _sqlite_later(seconds: float | None) -> str | None:
    """NULL seconds give NULL, as PostgreSQL's interval arithmetic does."""
    if seconds is None:
        return None
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime(SQLITE_STORAGE_FORMAT)


def _sqlite_slice(seconds: float) -> str:
    now = datetime.now(UTC).timestamp()
    start = datetime.fromtimestamp(now - now % seconds, UTC)
    return start.strftime(SQLITE_STORAGE_FORMAT)


SQLITE_FUNCTIONS: dict[str, tuple[int, Callable[..., str | None]]] = {
    SQLITE_NOW: (0, _sqlite_now),
    SQLITE_LATER: (1, _sqlite_later),
    SQLITE_SLICE: (1, _sqlite_slice),
}
"""Registered on every SQLite connection of the store: name -> (arguments, function)."""


class SqliteDialect(Dialect):
    def now(self) -> ColumnElement[datetime]:
        return Function(SQLITE_NOW, type_=Timestamp)

    def clock(self) -> ColumnElement[datetime]:
        return Function(SQLITE_NOW, type_=Timestamp)

    def later_by(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        return Function(SQLITE_LATER, seconds, type_=Timestamp)

    def ago(self, seconds: float) -> ColumnElement[datetime]:
        return self.later(-seconds)

    def slice_of_now(self, seconds: float) -> ColumnElement[datetime]:
        return Function(SQLITE_SLICE, bindparam(None, float(seconds), type_=Float), type_=Timestamp)

    def insert(self, table: Table) -> Any:
        return sqlite_insert(table)
