"""What the rescuer does: leases run out, and messages that were lost."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, or_, select, update

from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.records import RescuedTask, Task
from krolik.store.sql.core import (
    CANCELLED,
    ENDED_RUN_COLUMNS,
    EXPIRED,
    FAILED,
    PENDING,
    PROCESSING,
    SqlCore,
)
from krolik.store.sql.rows import row_to_task
from krolik.store.tables import outbox, tasks


class MaintenanceStatements(SqlCore):
    async def rescue_expired(self, limit: int) -> list[RescuedTask]:
        """Two statements in one transaction: lock the expired runs as they were (their
        worker and start, for the attempt records), then end them."""
        now, clock = self.dialect.now(), self.dialect.clock()
        expired = (
            select(*ENDED_RUN_COLUMNS)
            .where(tasks.c.status == PROCESSING, tasks.c.lease_expires_at < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        exhausted = tasks.c.attempts >= func.coalesce(tasks.c.max_attempts, 1)
        asked = tasks.c.cancel_requested  # a run asked to stop is not run again
        lost = "lease expired: the worker stopped heartbeating"
        async with self._tx() as conn:
            runs = {row["id"]: row for row in (await conn.execute(expired)).mappings().all()}
            if not runs:
                return []
            stmt = (
                update(tasks)
                .where(
                    tasks.c.id.in_(list(runs)),
                    tasks.c.status == PROCESSING,
                    tasks.c.lease_expires_at < now,
                )
                .values(
                    status=case((asked, CANCELLED), (exhausted, FAILED), else_=PENDING),
                    error=lost,
                    traceback=None,
                    finished_at=case((or_(asked, exhausted), clock), else_=None),
                    run_at=clock,
                    worker_id=None,
                    lease_expires_at=None,
                    updated_at=clock,
                )
                .returning(*tasks.c)
            )
            rows = (await conn.execute(stmt)).mappings().all()
            await self._dispatch(conn, [row for row in rows if row["status"] == PENDING])
            await self._record_attempts(
                conn,
                [
                    (
                        {
                            **runs[row["id"]],
                            "finished_at": row["updated_at"],
                            "status": row["status"],
                            "run_at": row["run_at"],
                            "error": lost,
                            "traceback": None,
                        },
                        AttemptOutcome.LOST,
                    )
                    for row in rows
                ],
            )
        return [
            RescuedTask(
                task_id=row["id"],
                status=TaskStatus(row["status"]),
                attempts=row["attempts"],
                queue=row["queue"],
                name=row["name"],
            )
            for row in rows
        ]

    async def expire_all_leases(self) -> int:
        stmt = (
            update(tasks)
            .where(tasks.c.status == PROCESSING)
            .values(lease_expires_at=self.dialect.later(-1))
            .returning(tasks.c.id)
        )
        async with self._tx() as conn:
            return len((await conn.execute(stmt)).all())

    async def expire_overdue(self, limit: int, task_ids: Sequence[int] | None = None) -> list[Task]:
        now, clock = self.dialect.now(), self.dialect.clock()
        condition = and_(
            tasks.c.status == PENDING,
            tasks.c.expires_at.is_not(None),
            tasks.c.expires_at <= now,
        )
        if task_ids is not None:
            if not task_ids:
                return []
            condition = and_(condition, tasks.c.id.in_(list(task_ids)))
        # Chosen once (see ``prune``): a rescanned subquery could take more than ``limit``.
        overdue = (
            select(tasks.c.id)
            .where(condition)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("overdue")
            .prefix_with("MATERIALIZED")
        )
        stmt = (
            update(tasks)
            .where(
                tasks.c.id.in_(select(overdue.c.id)),
                tasks.c.status == PENDING,
                tasks.c.expires_at <= now,
            )
            .values(
                status=EXPIRED,
                error="expired: not started by its expires_at",
                traceback=None,
                finished_at=clock,
                updated_at=clock,
            )
            .returning(*tasks.c)
        )
        async with self._tx() as conn:
            expired = [row_to_task(row) for row in (await conn.execute(stmt)).mappings().all()]
            if expired:
                ids = [task.id for task in expired]
                await conn.execute(delete(outbox).where(outbox.c.task_id.in_(ids)))
        return sorted(expired, key=lambda task: task.id)

    def _stale(self, older_than_seconds: float) -> ColumnElement[bool]:
        """Due pending tasks whose message went out at least that long ago (they became
        due then, and nothing touched them since) and that have no outbox row; not
        those held by their queue's gates (they wait for a wake-up, without a message)."""
        cutoff = self.dialect.ago(older_than_seconds)
        return and_(
            tasks.c.status == PENDING,
            tasks.c.held.is_(None),
            tasks.c.run_at <= cutoff,
            tasks.c.updated_at < cutoff,
            ~exists().where(outbox.c.task_id == tasks.c.id),
        )

    async def stale_queues(self, older_than_seconds: float) -> list[str]:
        stmt = select(tasks.c.queue).where(self._stale(older_than_seconds)).distinct()
        async with self._tx() as conn:
            return sorted((await conn.execute(stmt)).scalars().all())

    async def redispatch_stale(
        self, older_than_seconds: float, limit: int, queues: Sequence[str] | None = None
    ) -> int:
        if queues is not None and not queues:
            return 0
        condition = self._stale(older_than_seconds)
        if queues is not None:
            condition = and_(condition, tasks.c.queue.in_(list(queues)))
        stale = (
            select(tasks.c.id)
            .where(condition)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(tasks)
            .where(tasks.c.id.in_(stale), tasks.c.status == PENDING)
            .values(updated_at=self.dialect.clock())
            .returning(tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.run_at)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
            await self._dispatch(conn, rows)
        return len(rows)
