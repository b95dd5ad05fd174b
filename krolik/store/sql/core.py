"""What every statement group of the SQL stores stands on: the engine, the dialect, one
transaction per call with its errors classified, and the outbox rows written with tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from krolik.errors import InvalidTransition, TaskNotFound
from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.dialects import Dialect
from krolik.store.failures import raise_classified
from krolik.store.records import NewTask, OutboxEntry
from krolik.store.tables import attempts, outbox, tasks

PENDING = TaskStatus.PENDING.value
PROCESSING = TaskStatus.PROCESSING.value
DONE = TaskStatus.DONE.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value
EXPIRED = TaskStatus.EXPIRED.value

ENDED_RUN_COLUMNS = (
    tasks.c.id,
    tasks.c.run_token,
    tasks.c.attempts,
    tasks.c.worker_id,
    tasks.c.started_at,
    tasks.c.finished_at,
    tasks.c.updated_at,
    tasks.c.status,
    tasks.c.run_at,
    tasks.c.error,
    tasks.c.traceback,
)
"""What a statement ending a run returns, for the run's attempt record."""


class SqlCore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect) -> None:
        self.engine = engine
        self.dialect = dialect

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; driver errors surface classified (``store/failures.py``)."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (TaskNotFound, InvalidTransition):
            raise
        except Exception as exc:
            raise_classified(exc)
            raise

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        """Reachable and migrated: a database without Krolik's tables is not ready."""
        async with self._tx() as conn:
            await conn.execute(select(literal(1)).select_from(tasks).limit(0))

    async def _dispatch(
        self,
        conn: AsyncConnection,
        rows: Sequence[Mapping[Any, Any]],
        claimed_until: Sequence[datetime | None] | None = None,
    ) -> list[OutboxEntry | None]:
        """Write the outbox rows that will publish these tasks when they are due.

        A row given a ``claimed_until`` is written claimed and returned: its caller
        publishes it."""
        until = list(claimed_until) if claimed_until is not None else [None] * len(rows)
        values = [
            {
                "task_id": row["id"],
                "queue": row["queue"],
                "name": row["name"],
                "available_at": row["run_at"],
                "claimed_until": claim,
            }
            for row, claim in zip(rows, until, strict=True)
        ]
        if not values:
            return []
        if all(claim is None for claim in until):
            await conn.execute(insert(outbox), values)
            return [None] * len(values)
        written = await conn.execute(
            insert(outbox).returning(
                outbox.c.id,
                outbox.c.task_id,
                outbox.c.queue,
                outbox.c.name,
                sort_by_parameter_order=True,
            ),
            values,
        )
        return [
            OutboxEntry(id=r.id, task_id=r.task_id, queue=r.queue, name=r.name)
            if claim is not None
            else None
            for r, claim in zip(written.all(), until, strict=True)
        ]

    async def _record_attempts(
        self,
        conn: AsyncConnection,
        ended: Sequence[tuple[Mapping[Any, Any], AttemptOutcome]],
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """The attempt records of runs a statement on ``conn`` just ended, in its
        transaction: each row as that statement returned it (``ENDED_RUN_COLUMNS``).

        ``worker_id`` and ``attempt`` stand in for what the statement changed on the
        way (a run going back to pending forgets its worker; a released one its count)."""
        if not ended:
            return
        await conn.execute(
            insert(attempts),
            [
                {
                    "task_id": row["id"],
                    "run_token": row["run_token"],
                    "attempt": row["attempts"] if attempt is None else attempt,
                    "worker_id": row["worker_id"] if worker_id is None else worker_id,
                    "started_at": row["started_at"],
                    "finished_at": row["finished_at"] or row["updated_at"],
                    "outcome": outcome.value,
                    "error": row["error"],
                    "traceback": row["traceback"],
                    "retry_at": row["run_at"] if row["status"] == PENDING else None,
                }
                for row, outcome in ended
            ],
        )

    @staticmethod
    def _claimed_until(
        new_tasks: Sequence[NewTask], claim_seconds: float | None
    ) -> list[datetime | None]:
        """Until when each new task's outbox row is held for the caller, if at all.

        Only tasks due at once (no ``run_at``, no delay): handing over one that is not
        due yet would publish it early."""
        if claim_seconds is None:
            return [None] * len(new_tasks)
        until = datetime.now(UTC) + timedelta(seconds=claim_seconds)
        return [
            until if new.run_at is None and not new.delay_seconds else None for new in new_tasks
        ]
