"""Every statement of the store, in SQLAlchemy Core, shared by PostgreSQL and SQLite.

Each state change is one guarded ``UPDATE ... WHERE status = <expected> ...
RETURNING``: it names what it expects to find, so a duplicate delivery, a stale
worker or a second relay finds nothing to change. Where a task becomes due
(enqueue, retry, rescue, release) the same transaction writes its outbox row, so
a task is never committed without the record that will dispatch it.

Dialects differ only in their clock (``_now`` / ``_later``) and in row locking,
which SQLAlchemy leaves out where the database has none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from krolik.errors import InvalidTransition, StoreUnavailable, TaskNotFound
from krolik.states import TaskStatus
from krolik.store.base import (
    ApiKey,
    Claim,
    Enqueued,
    NewTask,
    OutboxEntry,
    OutboxStats,
    QueueStats,
    RescuedTask,
    RunRef,
    Task,
    TaskFilter,
    TaskStore,
)
from krolik.store.tables import Timestamp, api_keys, outbox, tasks

PENDING = TaskStatus.PENDING.value
PROCESSING = TaskStatus.PROCESSING.value
DONE = TaskStatus.DONE.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is away (rather than refusing a statement)."""
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # asyncpg's own errors, where the driver is used directly. A connection the server
    # closed while it sat idle (a restart, pg_terminate_backend) fails its next statement
    # with the shutdown error, or with InternalClientError when the driver had not yet
    # taken the closing in.
    return isinstance(
        exc,
        asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.InternalClientError,
    )


UNDEFINED_TABLE = "42P01"


def is_schema_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says a Krolik table does not exist: ``krolik migrate`` was not run."""
    for candidate in (exc, getattr(exc, "orig", None)):
        if getattr(candidate, "sqlstate", None) == UNDEFINED_TABLE:
            return True
    return isinstance(exc, OperationalError) and "no such table" in str(exc)


def raise_if_unavailable(exc: BaseException) -> None:
    """Raise ``StoreUnavailable`` (from ``exc``) if ``exc`` means the database is away,
    or has no Krolik tables yet (an operator's step is missing, not a bad request)."""
    if is_schema_missing(exc):
        raise StoreUnavailable("the database has no Krolik tables: run `krolik migrate`") from exc
    if is_unavailable(exc):
        raise StoreUnavailable(f"the task store cannot be reached: {type(exc).__name__}") from exc


def _aware(stamp: Any) -> Any:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    if isinstance(stamp, datetime) and stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp


TIMESTAMPS = (
    "run_at",
    "lease_expires_at",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)


def row_to_task(row: Mapping[Any, Any]) -> Task:
    values = dict(row)
    values["status"] = TaskStatus(values["status"])
    for key in TIMESTAMPS:
        values[key] = _aware(values[key])
    return Task(**values)


API_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.scope,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def _api_key(row: Mapping[Any, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        created_at=_aware(row["created_at"]),
        revoked_at=_aware(row["revoked_at"]),
    )


class SqlTaskStore(TaskStore):
    """The store over a SQLAlchemy async engine; subclasses pick the engine and clock."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- dialect hooks -------------------------------------------------------------
    def _now(self) -> ColumnElement[datetime]:
        """The current time as the database should record it."""
        return literal(datetime.now(UTC))

    def _later(self, seconds: float) -> ColumnElement[datetime]:
        return literal(datetime.now(UTC) + timedelta(seconds=seconds))

    # -- plumbing ------------------------------------------------------------------
    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; lost connections surface as ``StoreUnavailable``."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (TaskNotFound, InvalidTransition):
            raise
        except Exception as exc:
            raise_if_unavailable(exc)
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

    # -- producers -----------------------------------------------------------------
    async def enqueue(
        self, new_tasks: Sequence[NewTask], *, claim_outbox_seconds: float | None = None
    ) -> list[Enqueued]:
        """Tasks without an idempotency key go in as one multi-row INSERT; keyed ones
        one by one, each first looking for its key."""
        results: dict[int, Enqueued] = {}
        plain = [(i, new) for i, new in enumerate(new_tasks) if new.idempotency_key is None]
        claims = self._claimed_until(new_tasks, claim_outbox_seconds)
        async with self._tx() as conn:
            if plain:
                rows = (
                    (
                        await conn.execute(
                            self._insert_task()
                            .values(**self._new_task_values())
                            .returning(*tasks.c, sort_by_parameter_order=True),
                            [self._new_task_params(new) for _, new in plain],
                        )
                    )
                    .mappings()
                    .all()
                )
                entries = await self._dispatch(conn, rows, [claims[i] for i, _ in plain])
                for (index, _), row, entry in zip(plain, rows, entries, strict=True):
                    results[index] = Enqueued(row_to_task(row), created=True, outbox=entry)
            for index, new in enumerate(new_tasks):
                if new.idempotency_key is not None:
                    results[index] = await self._enqueue_keyed(conn, new, claims[index])
        return [results[index] for index in range(len(new_tasks))]

    def _new_task_values(self) -> dict[str, Any]:
        """The columns every new task gets the same way (clock, initial state)."""
        now = self._now()
        return {
            "status": PENDING,
            "attempts": 0,
            "cancel_requested": False,
            "run_at": self._due_at(),
            "created_at": now,
            "updated_at": now,
        }

    def _new_task_params(self, new: NewTask) -> dict[str, Any]:
        return {
            "name": new.name,
            "queue": new.queue,
            "payload": new.payload,
            "max_attempts": new.max_attempts,
            "timeout_seconds": new.timeout_seconds,
            "idempotency_key": new.idempotency_key,
            "request_id": new.request_id,
            "created_by": new.created_by,
            **self._due_params(new),
        }

    def _due_at(self) -> ColumnElement[datetime]:
        """A new task's run_at, from the parameters of ``_due_params``."""
        return bindparam("p_run_at", type_=Timestamp)

    def _due_params(self, new: NewTask) -> dict[str, Any]:
        if new.run_at is not None:
            return {"p_run_at": new.run_at.astimezone(UTC)}
        return {"p_run_at": datetime.now(UTC) + timedelta(seconds=new.delay_seconds or 0)}

    async def _enqueue_keyed(
        self, conn: AsyncConnection, new: NewTask, claimed_until: datetime | None
    ) -> Enqueued:
        key = new.idempotency_key or ""
        existing = await self._by_idempotency_key(conn, key)
        if existing is not None:
            return Enqueued(existing, created=False)
        stmt = self._on_key_conflict_do_nothing(
            self._insert_task().values(**self._new_task_values()).returning(*tasks.c)
        )
        row = (await conn.execute(stmt, self._new_task_params(new))).mappings().first()
        if row is None:  # a concurrent request with the same key won the race
            existing = await self._by_idempotency_key(conn, key)
            if existing is None:  # pragma: no cover - the winner's row is committed
                raise InvalidTransition("idempotency key conflict could not be resolved")
            return Enqueued(existing, created=False)
        [entry] = await self._dispatch(conn, [row], [claimed_until])
        return Enqueued(row_to_task(row), created=True, outbox=entry)

    def _insert_task(self) -> Any:
        return insert(tasks)

    def _on_key_conflict_do_nothing(self, stmt: Any) -> Any:
        return stmt.on_conflict_do_nothing(index_elements=[tasks.c.idempotency_key])

    async def _by_idempotency_key(self, conn: AsyncConnection, key: str) -> Task | None:
        row = (
            (await conn.execute(select(tasks).where(tasks.c.idempotency_key == key)))
            .mappings()
            .first()
        )
        return row_to_task(row) if row else None

    async def get(self, task_id: int) -> Task | None:
        async with self._tx() as conn:
            row = (
                (await conn.execute(select(tasks).where(tasks.c.id == task_id))).mappings().first()
            )
        return row_to_task(row) if row else None

    async def list_tasks(
        self, task_filter: TaskFilter, *, before_id: int | None, limit: int
    ) -> list[Task]:
        stmt = select(tasks).order_by(tasks.c.id.desc()).limit(limit)
        if task_filter.status is not None:
            stmt = stmt.where(tasks.c.status == task_filter.status.value)
        if task_filter.name is not None:
            stmt = stmt.where(tasks.c.name == task_filter.name)
        if task_filter.queue is not None:
            stmt = stmt.where(tasks.c.queue == task_filter.queue)
        if before_id is not None:
            stmt = stmt.where(tasks.c.id < before_id)
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [row_to_task(row) for row in rows]

    async def _explain_refusal(self, conn: AsyncConnection, task_id: int, action: str) -> None:
        row = (await conn.execute(select(tasks.c.status).where(tasks.c.id == task_id))).first()
        if row is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        raise InvalidTransition(f"task {task_id} is {row.status} and cannot be {action}")

    async def cancel(self, task_id: int) -> Task:
        now = self._now()
        async with self._tx() as conn:
            row = (
                (
                    await conn.execute(
                        update(tasks)
                        .where(tasks.c.id == task_id, tasks.c.status == PENDING)
                        .values(status=CANCELLED, finished_at=now, updated_at=now)
                        .returning(*tasks.c)
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                await conn.execute(delete(outbox).where(outbox.c.task_id == task_id))
                return row_to_task(row)
            row = (
                (
                    await conn.execute(
                        update(tasks)
                        .where(tasks.c.id == task_id, tasks.c.status == PROCESSING)
                        .values(cancel_requested=True, updated_at=now)
                        .returning(*tasks.c)
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                return row_to_task(row)
            await self._explain_refusal(conn, task_id, "cancelled")
        raise AssertionError("unreachable")  # pragma: no cover

    async def retry(self, task_id: int) -> Task:
        now = self._now()
        async with self._tx() as conn:
            row = (
                (
                    await conn.execute(
                        update(tasks)
                        .where(tasks.c.id == task_id, tasks.c.status.in_([FAILED, CANCELLED]))
                        .values(
                            status=PENDING,
                            attempts=0,
                            result=None,
                            error=None,
                            traceback=None,
                            cancel_requested=False,
                            run_at=now,
                            finished_at=None,
                            updated_at=now,
                        )
                        .returning(*tasks.c)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                await self._explain_refusal(conn, task_id, "retried")
                raise AssertionError("unreachable")  # pragma: no cover
            await self._dispatch(conn, [row])
        return row_to_task(row)

    # -- workers -------------------------------------------------------------------
    async def claim(
        self, task_id: int, worker_id: str, lease_seconds: float, default_max_attempts: int
    ) -> Task | None:
        now = self._now()
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == PENDING, tasks.c.run_at <= now)
            .values(
                status=PROCESSING,
                attempts=tasks.c.attempts + 1,
                max_attempts=func.coalesce(tasks.c.max_attempts, default_max_attempts),
                worker_id=worker_id,
                lease_expires_at=self._later(lease_seconds),
                started_at=now,
                updated_at=now,
            )
            .returning(*tasks.c)
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return row_to_task(row) if row else None

    async def claim_many(
        self, claims: Sequence[Claim], worker_id: str, lease_seconds: float
    ) -> list[Task | None]:
        answers: list[Task | None] = []
        for claim in claims:
            answers.append(
                await self.claim(
                    claim.task_id, worker_id, lease_seconds, claim.default_max_attempts
                )
            )
        return answers

    def _owned(self, run: RunRef) -> ColumnElement[bool]:
        return and_(
            tasks.c.id == run.task_id,
            tasks.c.status == PROCESSING,
            tasks.c.attempts == run.attempt,
            tasks.c.worker_id == run.worker_id,
        )

    async def heartbeat(self, runs: Sequence[RunRef], lease_seconds: float) -> dict[int, bool]:
        if not runs:
            return {}
        keys = [(run.task_id, run.attempt, run.worker_id) for run in runs]
        stmt = (
            update(tasks)
            .where(
                tasks.c.status == PROCESSING,
                tuple_(tasks.c.id, tasks.c.attempts, tasks.c.worker_id).in_(keys),
            )
            .values(lease_expires_at=self._later(lease_seconds))
            .returning(tasks.c.id, tasks.c.cancel_requested)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        return {row.id: bool(row.cancel_requested) for row in rows}

    async def _finish(self, run: RunRef, **values: Any) -> bool:
        now = self._now()
        stmt = (
            update(tasks)
            .where(self._owned(run))
            .values(lease_expires_at=None, finished_at=now, updated_at=now, **values)
            .returning(tasks.c.id)
        )
        async with self._tx() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def complete(self, run: RunRef, result: Any) -> bool:
        return await self._finish(run, status=DONE, result=result, error=None, traceback=None)

    async def complete_many(self, completions: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        return [await self.complete(run, result) for run, result in completions]

    async def fail(self, run: RunRef, error: str, traceback: str | None) -> bool:
        return await self._finish(run, status=FAILED, error=error, traceback=traceback)

    async def mark_cancelled(self, run: RunRef) -> bool:
        return await self._finish(run, status=CANCELLED, error="cancelled on request")

    async def _back_to_pending(
        self, run: RunRef, run_at: ColumnElement[datetime], **values: Any
    ) -> TaskStatus | None:
        now = self._now()
        asked = tasks.c.cancel_requested  # a run asked to stop is not run again
        stmt = (
            update(tasks)
            .where(self._owned(run))
            .values(
                status=case((asked, CANCELLED), else_=PENDING),
                finished_at=case((asked, now), else_=None),
                run_at=run_at,
                worker_id=None,
                lease_expires_at=None,
                updated_at=now,
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
        return TaskStatus(row["status"])

    async def retry_later(
        self, run: RunRef, error: str, traceback: str | None, delay_seconds: float
    ) -> TaskStatus | None:
        return await self._back_to_pending(
            run, self._later(delay_seconds), error=error, traceback=traceback
        )

    async def release(self, run: RunRef) -> TaskStatus | None:
        return await self._back_to_pending(run, self._now(), attempts=tasks.c.attempts - 1)

    async def fail_unrunnable(self, task_id: int, error: str) -> bool:
        now = self._now()
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == PENDING)
            .values(status=FAILED, error=error, finished_at=now, updated_at=now)
            .returning(tasks.c.id)
        )
        async with self._tx() as conn:
            return (await conn.execute(stmt)).first() is not None

    # -- maintenance ---------------------------------------------------------------
    async def rescue_expired(self, limit: int) -> list[RescuedTask]:
        now = self._now()
        expired = (
            select(tasks.c.id)
            .where(tasks.c.status == PROCESSING, tasks.c.lease_expires_at < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        exhausted = tasks.c.attempts >= func.coalesce(tasks.c.max_attempts, 1)
        asked = tasks.c.cancel_requested  # a run asked to stop is not run again
        stmt = (
            update(tasks)
            .where(tasks.c.id.in_(expired), tasks.c.status == PROCESSING)
            .values(
                status=case((asked, CANCELLED), (exhausted, FAILED), else_=PENDING),
                error="lease expired: the worker stopped heartbeating",
                finished_at=case((or_(asked, exhausted), now), else_=None),
                run_at=now,
                worker_id=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(*tasks.c)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
            await self._dispatch(conn, [row for row in rows if row["status"] == PENDING])
        return [
            RescuedTask(
                task_id=row["id"], status=TaskStatus(row["status"]), attempts=row["attempts"]
            )
            for row in rows
        ]

    async def expire_all_leases(self) -> int:
        stmt = (
            update(tasks)
            .where(tasks.c.status == PROCESSING)
            .values(lease_expires_at=self._later(-1))
            .returning(tasks.c.id)
        )
        async with self._tx() as conn:
            return len((await conn.execute(stmt)).all())

    async def redispatch_stale(self, older_than_seconds: float, limit: int) -> int:
        now = self._now()
        stale = (
            select(tasks.c.id)
            .where(
                tasks.c.status == PENDING,
                tasks.c.run_at <= now,
                tasks.c.updated_at < self._later(-older_than_seconds),
                ~exists().where(outbox.c.task_id == tasks.c.id),
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(tasks)
            .where(tasks.c.id.in_(stale), tasks.c.status == PENDING)
            .values(updated_at=now)
            .returning(tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.run_at)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
            await self._dispatch(conn, rows)
        return len(rows)

    async def queue_stats(self, stuck_after_seconds: float) -> list[QueueStats]:
        now = self._now()
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
                count(
                    and_(processing, tasks.c.started_at < self._later(-stuck_after_seconds))
                ).label("stuck"),
                func.min(case((due, tasks.c.run_at), else_=None)).label("oldest_pending_at"),
            )
            .where(tasks.c.status.in_([PENDING, PROCESSING]))
            .group_by(tasks.c.queue)
        )
        finished = (
            select(tasks.c.queue, tasks.c.status, func.count().label("n"))
            .where(tasks.c.finished_at >= self._later(-3600))
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
                oldest_pending_at=_aware(row["oldest_pending_at"]),
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
                oldest_pending_at=None,
            )
        return sorted(stats.values(), key=lambda item: item.queue)

    async def outbox_stats(self) -> OutboxStats:
        stmt = select(func.count(), func.min(outbox.c.available_at)).where(
            outbox.c.available_at <= self._now()
        )
        async with self._tx() as conn:
            backlog, oldest = (await conn.execute(stmt)).one()
        return OutboxStats(backlog=int(backlog), oldest_due_at=_aware(oldest))

    async def count_pending(self, queue: str) -> int:
        stmt = select(func.count()).where(tasks.c.status == PENDING, tasks.c.queue == queue)
        async with self._tx() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    # -- API keys --------------------------------------------------------------------
    async def create_api_key(self, name: str, scope: str, key_hash: str) -> ApiKey:
        async with self._tx() as conn:
            taken = (
                await conn.execute(select(api_keys.c.id).where(api_keys.c.name == name))
            ).first()
            if taken is not None:
                raise InvalidTransition(f"an API key named {name!r} exists already")
            row = (
                (
                    await conn.execute(
                        insert(api_keys)
                        .values(name=name, scope=scope, key_hash=key_hash, created_at=self._now())
                        .returning(*API_KEY_COLUMNS)
                    )
                )
                .mappings()
                .one()
            )
        return _api_key(row)

    async def list_api_keys(self) -> list[ApiKey]:
        async with self._tx() as conn:
            rows = (
                (await conn.execute(select(*API_KEY_COLUMNS).order_by(api_keys.c.id)))
                .mappings()
                .all()
            )
        return [_api_key(row) for row in rows]

    async def revoke_api_key(self, name: str) -> bool:
        stmt = (
            update(api_keys)
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=self._now())
            .returning(api_keys.c.id)
        )
        async with self._tx() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        stmt = select(*API_KEY_COLUMNS).where(
            api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return _api_key(row) if row else None

    # -- relay -----------------------------------------------------------------------
    async def claim_outbox(self, limit: int, claim_seconds: float) -> list[OutboxEntry]:
        now = self._now()
        due = (
            select(outbox.c.id)
            .where(
                outbox.c.available_at <= now,
                or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
            )
            .order_by(outbox.c.available_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(outbox)
            .where(outbox.c.id.in_(due))
            .values(claimed_until=self._later(claim_seconds))
            .returning(outbox.c.id, outbox.c.task_id, outbox.c.queue, outbox.c.name)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        entries = [
            OutboxEntry(id=r.id, task_id=r.task_id, queue=r.queue, name=r.name) for r in rows
        ]
        entries.sort(key=lambda entry: entry.id)
        return entries

    async def release_outbox(self, entry_ids: Sequence[int]) -> None:
        if not entry_ids:
            return
        async with self._tx() as conn:
            await conn.execute(
                update(outbox).where(outbox.c.id.in_(list(entry_ids))).values(claimed_until=None)
            )

    async def delete_outbox(self, entry_ids: Sequence[int]) -> None:
        if not entry_ids:
            return
        async with self._tx() as conn:
            await conn.execute(delete(outbox).where(outbox.c.id.in_(list(entry_ids))))
