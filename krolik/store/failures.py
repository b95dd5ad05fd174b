"""What a database error means for the caller: the one classification every service uses.

A driver error is one of three kinds, and each asks for a different answer:

* **unavailable**: the database cannot serve us now (connection lost or refused, too
  many connections, a pool checkout that timed out, a primary demoted to a read-only
  standby, a server shutting down, no Krolik tables yet). Wait and try again; the API
  answers 503 with ``Retry-After``. The connection that saw it is dropped, so the next
  one is opened afresh (and, with a multi-host URL, finds the new primary).
* **conflict**: the statement lost against another transaction (deadlock, serialization
  failure, ``lock_timeout``, ``statement_timeout``). Nothing was written; the same
  statement may simply run again.
* **bug**: anything else (a constraint, bad data, a programming error). Trying again
  gives the same answer; callers must still settle what they hold (a delivery, a slot).

The store raises ``StoreUnavailable`` and ``StoreConflict`` for the first two, so the
API, the worker, the relay and the rescuer branch on exception classes, never on driver
details. SQLSTATE codes are PostgreSQL's (appendix A of its manual); SQLite says "locked"
or "busy" in its messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from krolik.errors import StoreConflict, StoreUnavailable


class Failure(StrEnum):
    UNAVAILABLE = "unavailable"
    CONFLICT = "conflict"
    BUG = "bug"


UNDEFINED_TABLE = "42P01"
READ_ONLY_TRANSACTION = "25006"
CONFLICT_STATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout, NOWAIT)
        "57014",  # query_canceled (statement_timeout, pg_cancel_backend)
    }
)
UNAVAILABLE_STATES = frozenset(
    {
        READ_ONLY_TRANSACTION,  # a demoted primary, or a standby reached by mistake
        "25P03",  # idle_in_transaction_session_timeout: the session was ended
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, in recovery)
        "57P04",  # database_dropped
        UNDEFINED_TABLE,  # no Krolik tables: `krolik migrate` has not run yet
    }
)
UNAVAILABLE_CLASSES = ("08", "53", "58")
"""connection_exception, insufficient_resources (too many connections, disk full, out of
memory), system_error (I/O)."""

_DRIVER_UNAVAILABLE = (
    OSError,
    TimeoutError,
    PoolTimeout,
    InterfaceError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
)
"""Errors without a SQLSTATE that mean the connection, not the statement, failed. A
connection the server closed while it sat idle fails its next statement with
InternalClientError when the driver had not yet taken the closing in."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: SQLAlchemy's ``orig`` and the causes behind them."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [getattr(current, "orig", None), current.__cause__]


def sqlstate(exc: BaseException) -> str | None:
    for candidate in _chain(exc):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str) and len(state) == 5:
            return state
    return None


def classify(exc: BaseException) -> Failure:
    """Which of the three kinds ``exc`` is (see the module's docstring)."""
    state = sqlstate(exc)
    if state is not None:
        if state in CONFLICT_STATES:
            return Failure.CONFLICT
        if state in UNAVAILABLE_STATES or state[:2] in UNAVAILABLE_CLASSES:
            return Failure.UNAVAILABLE
        return Failure.BUG
    for candidate in _chain(exc):
        if isinstance(candidate, DBAPIError) and candidate.connection_invalidated:
            return Failure.UNAVAILABLE
        if _is_sqlite_busy(candidate):
            return Failure.CONFLICT
        if _is_sqlite_missing_table(candidate):
            return Failure.UNAVAILABLE
        if isinstance(candidate, _DRIVER_UNAVAILABLE):
            return Failure.UNAVAILABLE
        if type(candidate).__name__ == "OperationalError":
            # SQLite's (and the DB-API's) "the database could not do it": disk I/O,
            # a file that cannot be opened. The statement itself was fine.
            return Failure.UNAVAILABLE
    return Failure.BUG


def _is_sqlite_busy(exc: BaseException) -> bool:
    message = str(exc).lower()
    return type(exc).__name__ == "OperationalError" and (
        "database is locked" in message or "database is busy" in message
    )


def _is_sqlite_missing_table(exc: BaseException) -> bool:
    return type(exc).__name__ == "OperationalError" and "no such table" in str(exc)


def is_schema_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says a Krolik table does not exist: ``krolik migrate`` was not run."""
    if sqlstate(exc) == UNDEFINED_TABLE:
        return True
    return any(_is_sqlite_missing_table(candidate) for candidate in _chain(exc))


def raise_classified(exc: BaseException) -> None:
    """Raise ``StoreUnavailable`` or ``StoreConflict`` (from ``exc``) for those kinds;
    return for a bug, which the caller re-raises as it is."""
    kind = classify(exc)
    if kind is Failure.UNAVAILABLE:
        if is_schema_missing(exc):
            raise StoreUnavailable(
                "the database has no Krolik tables: run `krolik migrate`"
            ) from exc
        raise StoreUnavailable(f"the task store cannot be reached: {_describe(exc)}") from exc
    if kind is Failure.CONFLICT:
        raise StoreConflict(f"the statement conflicted with another one: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    for candidate in reversed(list(_chain(exc))):
        name = type(candidate).__name__
        if name not in {"DBAPIError", "Error", "OperationalError", "InterfaceError"}:
            return name
    return type(exc).__name__
