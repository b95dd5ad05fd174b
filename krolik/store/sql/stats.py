"""Counts for operators and admission: per queue, the outbox, pending work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select

from krolik.store.records import OutboxStats, QueueStats
from krolik.store.sql.core import CANCELLED, DONE, EXPIRED, FAILED, PENDING, PROCESSING, SqlCore
from krolik.store.sql.rows import aware
from krolik.store.tables import outbox, tasks


class StatsStatements(SqlCore):
    async def queue_stats(self, stuck_after_seconds: float) -> list[QueueStats]:
        now = self.dialect.now()
        stuck_since = self.dialect.ago(stuck_after_seconds)
        pending, processing = tasks.c.status == PENDING, tasks.c.status == PROCESSING
        due = and_(pending, tasks.c.run_at <= now)

        def count(condition: ColumnElement[bool]) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        live = (
            select(
                tasks.c.queue,
                count(due).label("pending"),
                count(and_(pending, tasks.c.run_at > now)).label("scheduled"),
                count(processing).label("processing"),
                count(and_(processing, tasks.c.started_at < stuck_since)).label("stuck"),
                func.min(case((due, tasks.c.run_at), else_=None)).label("oldest_pending_at"),
            )
            .where(tasks.c.status.in_([PENDING, PROCESSING]))
            .group_by(tasks.c.queue)
        )
        finished = (
            select(tasks.c.queue, tasks.c.status, func.count().label("n"))
            .where(tasks.c.finished_at >= self.dialect.ago(3600))
            .group_by(tasks.c.queue, tasks.c.status)
        )
        async with self._tx() as conn:
            live_rows = (await conn.execute(live)).mappings().all()
            finished_rows = (await conn.execute(finished)).mappings().all()
        recent: dict[tuple[str, str], int] = {
            (row["queue"], row["status"]): int(row["n"]) for row in finished_rows
        }
        stats = {
            row["queue"]: QueueStats(
                queue=row["queue"],
                pending=int(row["pending"]),
                scheduled=int(row["scheduled"]),
                processing=int(row["processing"]),
                stuck=int(row["stuck"]),
                done_last_hour=recent.get((row["queue"], DONE), 0),
                failed_last_hour=recent.get((row["queue"], FAILED), 0),
                cancelled_last_hour=recent.get((row["queue"], CANCELLED), 0),
                expired_last_hour=recent.get((row["queue"], EXPIRED), 0),
                oldest_pending_at=aware(row["oldest_pending_at"]),
            )
            for row in live_rows
        }
        for queue in {queue for queue, _ in recent} - stats.keys():
            stats[queue] = QueueStats(
                queue=queue,
                pending=0,
                scheduled=0,
                processing=0,
                stuck=0,
                done_last_hour=recent.get((queue, DONE), 0),
                failed_last_hour=recent.get((queue, FAILED), 0),
                cancelled_last_hour=recent.get((queue, CANCELLED), 0),
                expired_last_hour=recent.get((queue, EXPIRED), 0),
                oldest_pending_at=None,
            )
        return sorted(stats.values(), key=lambda item: item.queue)

    async def outbox_stats(self) -> OutboxStats:
        stmt = select(func.count(), func.min(outbox.c.available_at)).where(
            outbox.c.available_at <= self.dialect.now()
        )
        async with self._tx() as conn:
            backlog, oldest = (await conn.execute(stmt)).one()
        return OutboxStats(backlog=int(backlog), oldest_due_at=aware(oldest))

    async def count_due(self, queues: Sequence[str], names: Sequence[str]) -> int:
        stmt = select(func.count()).where(
            tasks.c.status == PENDING,
            tasks.c.run_at <= self.dialect.now(),
            tasks.c.queue.in_(list(queues)),
            tasks.c.name.in_(list(names)),
        )
        async with self._tx() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def count_pending(self, queue: str) -> int:
        stmt = select(func.count()).where(tasks.c.status == PENDING, tasks.c.queue == queue)
        async with self._tx() as conn:
            return int((await conn.execute(stmt)).scalar_one())
