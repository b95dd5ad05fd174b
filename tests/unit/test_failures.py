"""The one classification of database errors: unavailable, conflict, or a bug.

The errors are the drivers' own classes (asyncpg's by SQLSTATE, SQLAlchemy's wrappers,
sqlite3's), built here as the drivers build them; ``tests/integration/test_driver_errors.py``
gets the same ones from the real PostgreSQL.
"""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from krolik.errors import StoreConflict, StoreUnavailable
from krolik.store.failures import Failure, classify, is_schema_missing, raise_classified

UNAVAILABLE = [
    asyncpg.TooManyConnectionsError("too many connections for role"),
    asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InternalClientError("unexpected connection state"),
    asyncpg.UndefinedTableError('relation "krolik_tasks" does not exist'),
    asyncpg.DiskFullError("could not extend file"),
    ConnectionRefusedError(111, "Connect call failed"),
    TimeoutError(),
    PoolTimeout("QueuePool limit of size 5 overflow 0 reached"),
    sqlite3.OperationalError("unable to open database file"),
    sqlite3.OperationalError("no such table: krolik_tasks"),
]
CONFLICT = [
    asyncpg.DeadlockDetectedError("deadlock detected"),
    asyncpg.SerializationError("could not serialize access"),
    asyncpg.LockNotAvailableError("canceling statement due to lock timeout"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    sqlite3.OperationalError("database is locked"),
]
BUG = [
    asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.InvalidTextRepresentationError("invalid input syntax for type json"),
    asyncpg.UndefinedColumnError('column "nope" does not exist'),
    ValueError("a programming error"),
    sqlite3.IntegrityError("CHECK constraint failed"),
]


def wrapped(error: Exception) -> DBAPIError:
    """As SQLAlchemy raises it: a DBAPIError whose ``orig`` is the driver's error."""
    return DBAPIError.instance("SELECT 1", None, error, type(error))


@pytest.mark.parametrize("error", UNAVAILABLE, ids=repr)
def test_unavailable(error: Exception) -> None:
    assert classify(error) is Failure.UNAVAILABLE
    assert classify(wrapped(error)) is Failure.UNAVAILABLE
    with pytest.raises(StoreUnavailable):
        raise_classified(wrapped(error))


@pytest.mark.parametrize("error", CONFLICT, ids=repr)
def test_conflict(error: Exception) -> None:
    assert classify(error) is Failure.CONFLICT
    assert classify(wrapped(error)) is Failure.CONFLICT
    with pytest.raises(StoreConflict):
        raise_classified(wrapped(error))


@pytest.mark.parametrize("error", BUG, ids=repr)
def test_bug(error: Exception) -> None:
    assert classify(error) is Failure.BUG
    assert classify(wrapped(error)) is Failure.BUG
    raise_classified(wrapped(error))  # returns: the caller re-raises it as it is


def test_the_cause_behind_the_adapter_is_read() -> None:
    """SQLAlchemy's asyncpg adapter raises its own error with the driver's as the cause."""
    adapted = RuntimeError("adapted")
    adapted.__cause__ = asyncpg.LockNotAvailableError("lock timeout")
    assert classify(OperationalError("UPDATE", None, adapted)) is Failure.CONFLICT


def test_an_invalidated_connection_is_unavailable() -> None:
    error = DBAPIError.instance("SELECT 1", None, ValueError("gone"), ValueError)
    error.connection_invalidated = True
    assert classify(error) is Failure.UNAVAILABLE


def test_a_missing_schema_says_to_migrate() -> None:
    missing = wrapped(asyncpg.UndefinedTableError('relation "krolik_tasks" does not exist'))
    assert is_schema_missing(missing)
    with pytest.raises(StoreUnavailable, match="krolik migrate"):
        raise_classified(missing)
    assert not is_schema_missing(wrapped(asyncpg.UniqueViolationError("dup")))


def test_integrity_errors_stay_bugs() -> None:
    assert classify(IntegrityError("INSERT", None, ValueError("check"))) is Failure.BUG
