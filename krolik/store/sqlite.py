"""The SQLite store: the source of truth of the embedded mode (``krolik dev``).

The statements of ``store/sql/`` plus SQLite's own hot ones (in Core, here). SQLite has
one writer at a time, so the store keeps one connection and transactions take turns on
it; a batch of claims or completions is one transaction. WAL with
``synchronous=NORMAL`` keeps every committed transaction across a crash of the process
(kill -9 included). Times are SQLite functions of the connection
(``store/dialects.py``), evaluated when the statement runs: a lease computed before
the wait for the connection would be short by that wait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import and_, delete, event, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from krolik.migrate import upgrade_async
from krolik.states import AttemptOutcome
from krolik.store.dialects import SQLITE_FUNCTIONS, SqliteDialect
from krolik.store.records import Enqueued, NewTask, OutboxEntry, RunRef, Task
from krolik.store.sql.core import DONE
from krolik.store.sql.flow import gated
from krolik.store.sql.rows import row_to_task
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import outbox, queues, tasks


def sqlite_url(path: Path | str) -> str:
    return f"sqlite+aiosqlite:///{Path(path)}"


def _json_dumps(value: Any) -> bytes:
    """JSON as UTF-8 bytes, which SQLite stores as a BLOB, exactly as given.

    The payload and result columns are declared ``JSON``, a type name that gives
    them NUMERIC affinity: stored as text, a bare number such as ``42`` or ``1.0``
    would become an INTEGER (or REAL) that no longer reads back as JSON. SQLite
    never converts a BLOB.
    """
    return orjson.dumps(value)


def _json_loads(value: bytes | str | float) -> Any:
    if isinstance(value, int | float):  # a bare number written as text by an older version
        return value
    return orjson.loads(value)


def create_engine(path: Path | str) -> AsyncEngine:
    engine = create_async_engine(
        sqlite_url(path),
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()
        for name, (arguments, function) in SQLITE_FUNCTIONS.items():
            dbapi_connection.create_function(name, arguments, function)

    return engine


class SqliteTaskStore(SqlTaskStore):
    """One file, one writer; migrated to the current schema when opened."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        super().__init__(create_engine(self.path), SqliteDialect())

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await upgrade_async(sqlite_url(self.path))

    def sibling(self) -> SqliteTaskStore:
        return SqliteTaskStore(self.path)

    # -- the hot statements ------------------------------------------------------------
    async def _insert_plain(
        self, conn: AsyncConnection, new_tasks: Sequence[NewTask], claim_seconds: float | None
    ) -> list[Enqueued]:
        rows = (
            (
                await conn.execute(
                    self.dialect.insert(tasks)
                    .values(**self._new_task_values())
                    .returning(*tasks.c, sort_by_parameter_order=True),
                    [self._new_task_params(new) for new in new_tasks],
                )
            )
            .mappings()
            .all()
        )
        claimed_until = self._claimed_until(new_tasks, claim_seconds)
        entries = await self._dispatch(conn, rows, claimed_until)
        return [
            Enqueued(row_to_task(row), created=True, outbox=entry)
            for row, entry in zip(rows, entries, strict=True)
        ]

    async def claim_many(
        self,
        task_ids: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task | None]:
        if not task_ids or not handlers:
            return [None] * len(task_ids)
        plain = and_(~exists().where(queues.c.name == tasks.c.queue, gated()), ~self._outranked())
        values = self._claim_values(worker_id, lease_seconds, handlers)
        answers: list[Task | None] = []
        async with self._tx() as conn:
            for task_id in task_ids:
                stmt = (
                    update(tasks)
                    .where(tasks.c.id == task_id, self._claimable(list(handlers)), plain)
                    .values(**values)
                    .returning(*tasks.c)
                )
                row = (await conn.execute(stmt)).mappings().first()
                answers.append(row_to_task(row) if row else None)
        return await self._with_gated_claims(task_ids, answers, worker_id, lease_seconds, handlers)

    async def complete_many(self, completions: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        async with self._tx() as conn:
            return [await self._complete_on(conn, run, result) for run, result in completions]

    async def _complete_on(self, conn: AsyncConnection, run: RunRef, result: Any) -> bool:
        return await self._finish_on(
            conn,
            run,
            AttemptOutcome.SUCCEEDED,
            status=DONE,
            result=result,
            error=None,
            traceback=None,
        )

    async def complete_and_claim_held(
        self,
        run: RunRef,
        result: Any,
        queue: str,
        most: int,
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> tuple[bool, list[Task]]:
        claimed: list[Task] = []
        async with self._tx() as conn:
            done = await self._complete_on(conn, run, result)
            if done and most > 0 and handlers and await self._holds_any(conn, queue):
                claimed = await self._claim_in_queue(
                    conn, queue, [], worker_id, lease_seconds, handlers, wanted=most
                )
        return done, [replace(task, gated=True) for task in claimed]

    async def claim_outbox(
        self, limit: int, claim_seconds: float, *, skip_queues: Sequence[str] = ()
    ) -> list[OutboxEntry]:
        now = self.dialect.now()
        condition = and_(
            outbox.c.available_at <= now,
            or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
        )
        if skip_queues:
            condition = and_(condition, outbox.c.queue.not_in(list(skip_queues)))
        due = (
            select(outbox.c.id)
            .where(condition)
            .order_by(outbox.c.available_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(outbox)
            .where(outbox.c.id.in_(due))
            .values(claimed_until=self.dialect.later(claim_seconds))
            .returning(outbox.c.id, outbox.c.task_id, outbox.c.queue, outbox.c.name)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        entries = [
            OutboxEntry(id=r.id, task_id=r.task_id, queue=r.queue, name=r.name) for r in rows
        ]
        entries.sort(key=lambda entry: entry.id)
        return entries

    async def delete_outbox(self, entry_ids: Sequence[int]) -> None:
        if not entry_ids:
            return
        async with self._tx() as conn:
            await conn.execute(delete(outbox).where(outbox.c.id.in_(list(entry_ids))))
