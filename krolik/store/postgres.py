"""The PostgreSQL store: the production source of truth."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy import ColumnElement, bindparam, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import Float

from krolik.settings import DatabaseSettings
from krolik.store.base import Enqueued, NewTask
from krolik.store.sql import SqlTaskStore, is_unavailable, raise_if_unavailable, row_to_task
from krolik.store.tables import Timestamp, tasks


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# The hot path of submission: tasks and their outbox rows in ONE statement (one round
# trip, one implicit transaction), the rows fed as arrays. Used for tasks without an
# idempotency key; keyed ones take the general path of sql.py.
ENQUEUE_SQL = """
WITH new AS (
    INSERT INTO krolik_tasks (
        name, queue, payload, status, attempts, max_attempts, timeout_seconds,
        request_id, created_by, cancel_requested, run_at, created_at, updated_at
    )
    SELECT n, q, p::jsonb, 'pending', 0, m, t, r, c, false,
           coalesce(ra, clock_timestamp() + make_interval(secs => d)),
           clock_timestamp(), clock_timestamp()
    FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::text[],
        $7::text[], $8::timestamptz[], $9::float8[]
    ) WITH ORDINALITY AS u(n, q, p, m, t, r, c, ra, d, ord)
    ORDER BY ord
    RETURNING *
), dispatch AS (
    INSERT INTO krolik_outbox (task_id, queue, name, available_at)
    SELECT id, queue, name, run_at FROM new
)
SELECT * FROM new ORDER BY id
"""


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    return create_async_engine(
        settings.dsn,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        # No pre-ping: it costs a round trip per checkout. A connection found dead
        # fails one call (503) and SQLAlchemy then drops the whole stale pool.
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

    async def enqueue(self, new_tasks: Sequence[NewTask]) -> list[Enqueued]:
        if not new_tasks or any(new.idempotency_key is not None for new in new_tasks):
            return await super().enqueue(new_tasks)
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [], [])
        for new in new_tasks:
            for column, value in zip(
                columns,
                (
                    new.name,
                    new.queue,
                    json_dumps(new.payload),
                    new.max_attempts,
                    new.timeout_seconds,
                    new.request_id,
                    new.created_by,
                    new.run_at.astimezone(UTC) if new.run_at is not None else None,
                    float(new.delay_seconds or 0),
                ),
                strict=True,
            ):
                column.append(value)
        try:
            async with self.engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                try:
                    records = await raw.fetch(ENQUEUE_SQL, *columns)
                except Exception as exc:
                    if is_unavailable(exc):  # SQLAlchemy did not see it: drop the connection
                        await conn.invalidate()
                    raise
        except asyncpg.PostgresError as exc:
            raise_if_unavailable(exc)
            # Data PostgreSQL refuses: the general path raises the same error as every
            # other statement of the store does (nothing of the batch was written).
            return await super().enqueue(new_tasks)
        except Exception as exc:
            raise_if_unavailable(exc)
            raise
        # SQLAlchemy's asyncpg codecs already decoded the JSON columns.
        return [Enqueued(row_to_task(record), created=True) for record in records]

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
