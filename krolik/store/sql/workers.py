"""The worker registry: who serves what, until when it counts as alive."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update

from krolik.store.records import WorkerInfo
from krolik.store.sql.core import SqlCore
from krolik.store.sql.rows import row_to_worker
from krolik.store.tables import workers


class WorkerStatements(SqlCore):
    async def register_worker(self, worker: WorkerInfo) -> None:
        values = {
            "host": worker.host,
            "pid": worker.pid,
            "queues": list(worker.queues),
            "handlers": list(worker.handlers),
            "concurrency": worker.concurrency,
            "running": worker.running,
            "started_at": worker.started_at,
            "last_seen_at": self.dialect.clock(),
            "expires_at": worker.expires_at,
        }
        async with self._tx() as conn:
            updated = (
                await conn.execute(
                    update(workers)
                    .where(workers.c.id == worker.id)
                    .values(**values)
                    .returning(workers.c.id)
                )
            ).first()
            if updated is None:
                await conn.execute(insert(workers).values(id=worker.id, **values))

    async def touch_worker(self, worker_id: str, running: int, lease_seconds: float) -> bool:
        stmt = (
            update(workers)
            .where(workers.c.id == worker_id)
            .values(
                running=running,
                last_seen_at=self.dialect.clock(),
                expires_at=self.dialect.later(lease_seconds),
            )
            .returning(workers.c.id)
        )
        async with self._tx() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def unregister_worker(self, worker_id: str) -> None:
        async with self._tx() as conn:
            await conn.execute(delete(workers).where(workers.c.id == worker_id))

    async def list_workers(self, *, include_expired: bool = False) -> list[WorkerInfo]:
        stmt = select(workers).order_by(workers.c.started_at, workers.c.id)
        if not include_expired:
            stmt = stmt.where(workers.c.expires_at > self.dialect.now())
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [row_to_worker(row) for row in rows]

    async def prune_workers(self, expired_for_seconds: float) -> int:
        stmt = (
            delete(workers)
            .where(workers.c.expires_at < self.dialect.ago(expired_for_seconds))
            .returning(workers.c.id)
        )
        async with self._tx() as conn:
            return len((await conn.execute(stmt)).all())
