"""A run's life after its claim, from the worker's side: heartbeat, finish, go back.

Every statement is guarded by the run's fencing token (``owned``). The claims and the
completions, on the path of every task, are the stores' own (one per database).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, false, insert, or_, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.records import RunRef
from krolik.store.sql.core import (
    CANCELLED,
    ENDED_RUN_COLUMNS,
    FAILED,
    PENDING,
    PROCESSING,
    SqlCore,
)
from krolik.store.tables import outbox, tasks

NOT_COUNTED = frozenset({AttemptOutcome.RELEASED, AttemptOutcome.SNOOZED})
"""Runs that end without counting an attempt (the worker stopped; the handler snoozed)."""


class RunStatements(SqlCore):
    @staticmethod
    def _owned(run: RunRef) -> ColumnElement[bool]:
        """The guard of every statement a run makes: still running, under its token."""
        return and_(
            tasks.c.id == run.task_id,
            tasks.c.status == PROCESSING,
            tasks.c.run_token == run.token,
        )

    async def heartbeat(
        self, runs: Sequence[RunRef], lease_seconds: float, *, worker_id: str | None = None
    ) -> dict[RunRef, bool]:
        if not runs and worker_id is None:
            return {}
        keys = list({(run.task_id, run.token) for run in runs})
        held: ColumnElement[bool] = (
            tuple_(tasks.c.id, tasks.c.run_token).in_(keys) if keys else false()
        )
        if worker_id is not None:
            held = or_(held, tasks.c.worker_id == worker_id)
        stmt = (
            update(tasks)
            .where(tasks.c.status == PROCESSING, held)
            .values(lease_expires_at=self.dialect.later(lease_seconds))
            .returning(tasks.c.id, tasks.c.run_token, tasks.c.cancel_requested)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        kept = {(row.id, row.run_token): bool(row.cancel_requested) for row in rows}
        return {run: kept[key] for run in runs if (key := (run.task_id, run.token)) in kept}

    async def record_progress(self, reports: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        if not reports:
            return []
        answers = []
        async with self._tx() as conn:
            for run, report in reports:
                stmt = (
                    update(tasks)
                    .where(self._owned(run))
                    .values(progress=report)
                    .returning(tasks.c.id)
                )
                answers.append((await conn.execute(stmt)).first() is not None)
        return answers

    def _finish_stmt(self, run: RunRef, **values: Any) -> Any:
        clock = self.dialect.clock()
        return (
            update(tasks)
            .where(self._owned(run))
            .values(lease_expires_at=None, finished_at=clock, updated_at=clock, **values)
            .returning(*ENDED_RUN_COLUMNS)
        )

    async def _finish_on(
        self, conn: AsyncConnection, run: RunRef, outcome: AttemptOutcome, **values: Any
    ) -> bool:
        """End the run with its attempt record, on ``conn``; False if it is not ours."""
        row = (await conn.execute(self._finish_stmt(run, **values))).mappings().first()
        if row is None:
            return False
        await self._record_attempts(conn, [(row, outcome)])
        return True

    async def _finish(self, run: RunRef, outcome: AttemptOutcome, **values: Any) -> bool:
        async with self._tx() as conn:
            return await self._finish_on(conn, run, outcome, **values)

    async def fail(self, run: RunRef, error: str, traceback: str | None) -> bool:
        return await self._finish(
            run, AttemptOutcome.FAILED, status=FAILED, error=error, traceback=traceback
        )

    async def mark_cancelled(self, run: RunRef) -> bool:
        return await self._finish(
            run, AttemptOutcome.CANCELLED, status=CANCELLED, error="cancelled on request"
        )

    async def _back_to_pending(
        self,
        run: RunRef,
        outcome: AttemptOutcome,
        run_at: ColumnElement[datetime],
        **values: Any,
    ) -> TaskStatus | None:
        clock = self.dialect.clock()
        asked = tasks.c.cancel_requested  # a run asked to stop is not run again
        stmt = (
            update(tasks)
            .where(self._owned(run))
            .values(
                status=case((asked, CANCELLED), else_=PENDING),
                finished_at=case((asked, clock), else_=None),
                run_at=run_at,
                worker_id=None,
                lease_expires_at=None,
                updated_at=clock,
                **values,
            )
            .returning(*tasks.c)
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:
                return None
            if row["status"] == PENDING:
                await self._dispatch(conn, [row])
            ended = outcome if row["status"] == PENDING else AttemptOutcome.CANCELLED
            record = dict(row)
            if outcome in NOT_COUNTED:  # the error is an earlier attempt's
                record["error"] = record["traceback"] = None
            await self._record_attempts(
                conn, [(record, ended)], worker_id=run.worker_id, attempt=run.attempt
            )
        return TaskStatus(row["status"])

    async def retry_later(
        self, run: RunRef, error: str, traceback: str | None, delay_seconds: float
    ) -> TaskStatus | None:
        return await self._back_to_pending(
            run,
            AttemptOutcome.RETRIED,
            self.dialect.later(delay_seconds),
            error=error,
            traceback=traceback,
        )

    async def release(self, run: RunRef) -> TaskStatus | None:
        return await self._back_to_pending(
            run, AttemptOutcome.RELEASED, self.dialect.clock(), attempts=tasks.c.attempts - 1
        )

    async def snooze(self, run: RunRef, delay_seconds: float) -> TaskStatus | None:
        return await self._back_to_pending(
            run,
            AttemptOutcome.SNOOZED,
            self.dialect.later(delay_seconds),
            attempts=tasks.c.attempts - 1,
        )

    async def dispatch_later(self, task_ids: Sequence[int], delay_seconds: float) -> list[int]:
        if not task_ids:
            return []
        stmt = (
            update(tasks)
            .where(tasks.c.id.in_(list(task_ids)), tasks.c.status == PENDING)
            .values(updated_at=self.dialect.clock())
            .returning(tasks.c.id, tasks.c.queue, tasks.c.name)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
            if rows:
                available = self.dialect.later(delay_seconds)
                await conn.execute(
                    insert(outbox).values(available_at=available),
                    [{"task_id": r.id, "queue": r.queue, "name": r.name} for r in rows],
                )
        return sorted(row.id for row in rows)

    async def fail_unrunnable(self, task_id: int, error: str) -> bool:
        clock = self.dialect.clock()
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == PENDING)
            .values(status=FAILED, error=error, finished_at=clock, updated_at=clock)
            .returning(tasks.c.id)
        )
        async with self._tx() as conn:
            if (await conn.execute(stmt)).first() is None:
                return False
            await conn.execute(delete(outbox).where(outbox.c.task_id == task_id))
        return True
