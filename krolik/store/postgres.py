"""The PostgreSQL store: the production source of truth."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, bindparam, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import Float

from krolik.settings import DatabaseSettings
from krolik.store.base import NewTask
from krolik.store.sql import SqlTaskStore
from krolik.store.tables import Timestamp, tasks


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    return create_async_engine(
        settings.dsn,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=True,
        pool_timeout=settings.connect_timeout_seconds,
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "command_timeout": 30,
            "server_settings": {"application_name": "krolik"},
        },
    )


class PostgresTaskStore(SqlTaskStore):
    """Uses the database clock, so leases mean the same on every machine."""

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> PostgresTaskStore:
        return cls(create_engine(settings))

    def _now(self) -> ColumnElement[datetime]:
        # clock_timestamp, not now(): a finish time is the moment of finishing,
        # not the start of the transaction.
        return func.clock_timestamp()

    def _later(self, seconds: float) -> ColumnElement[datetime]:
        return func.clock_timestamp() + func.make_interval(
            0, 0, 0, 0, 0, 0, bindparam(None, seconds, type_=Float)
        )

    def _due_at(self) -> ColumnElement[datetime]:
        return func.coalesce(
            bindparam("p_run_at", type_=Timestamp),
            func.clock_timestamp()
            + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("p_delay", type_=Float)),
        )

    def _due_params(self, new: NewTask) -> dict[str, Any]:
        run_at = new.run_at.astimezone(UTC) if new.run_at is not None else None
        return {"p_run_at": run_at, "p_delay": float(new.delay_seconds or 0)}

    def _insert_task(self) -> Any:
        return pg_insert(tasks)
