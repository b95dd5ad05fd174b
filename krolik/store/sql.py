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

from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import Float

from krolik.errors import IdempotencyConflict, InvalidTransition, TaskNotFound
from krolik.states import TaskStatus
from krolik.store.base import (
    ApiKey,
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
    WorkerInfo,
)
from krolik.store.failures import raise_classified
from krolik.store.tables import Timestamp, api_keys, outbox, tasks, workers

PENDING = TaskStatus.PENDING.value
PROCESSING = TaskStatus.PROCESSING.value
DONE = TaskStatus.DONE.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value


def key_scope(new: NewTask) -> str:
    """Whose key it is: idempotency keys of different callers never meet."""
    return new.created_by or ""


def _key_of(new: NewTask) -> tuple[str, str]:
    return key_scope(new), new.idempotency_key or ""


def _mismatch(stored: str | None, sent: str | None) -> bool:
    """A key reused with another body. A task stored before fingerprints were kept, or a
    caller that sent none, matches anything."""
    return stored is not None and sent is not None and stored != sent


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


def _worker(row: Mapping[Any, Any]) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        queues=list(row["queues"]),
        handlers=list(row["handlers"]),
        concurrency=row["concurrency"],
        running=row["running"],
        started_at=_aware(row["started_at"]),
        last_seen_at=_aware(row["last_seen_at"]),
        expires_at=_aware(row["expires_at"]),
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
    @abstractmethod
    def _now(self) -> ColumnElement[datetime]:
        """The current time for conditions: one value for the whole statement, so that a
        comparison with an indexed column is an index condition (PostgreSQL's
        ``clock_timestamp()`` changes row by row, and makes a scan of every row)."""

    @abstractmethod
    def _clock(self) -> ColumnElement[datetime]:
        """The current time to record (a finish time is the moment of finishing)."""

    def _later(self, seconds: float) -> ColumnElement[datetime]:
        """``seconds`` after ``_clock()``, to record (leases, retry times)."""
        return self._later_by(bindparam(None, float(seconds), type_=Float))

    @abstractmethod
    def _later_by(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        """``_later`` for a number of seconds the statement computes or binds."""

    @abstractmethod
    def _ago(self, seconds: float) -> ColumnElement[datetime]:
        """``seconds`` before ``_now()``, for conditions."""

    # -- plumbing ------------------------------------------------------------------
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
        self,
        new_tasks: Sequence[NewTask],
        *,
        claim_outbox_seconds: float | None = None,
        refuse_mismatch: bool = False,
    ) -> list[Enqueued]:
        """Tasks without an idempotency key go in as one multi-row INSERT; keyed ones as
        a few statements for all of them (see ``_enqueue_keyed``)."""
        results: dict[int, Enqueued] = {}
        plain = [(i, new) for i, new in enumerate(new_tasks) if new.idempotency_key is None]
        keyed = [(i, new) for i, new in enumerate(new_tasks) if new.idempotency_key is not None]
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
            if keyed:
                results.update(await self._enqueue_keyed(conn, keyed, claims))
                mismatched = [new.idempotency_key for i, new in keyed if results[i].mismatch]
                if refuse_mismatch and mismatched:
                    raise IdempotencyConflict(
                        "these idempotency keys were used before with a different "
                        f"request body: {', '.join(map(repr, mismatched))}"
                    )
        return [results[index] for index in range(len(new_tasks))]

    def _new_task_values(self) -> dict[str, Any]:
        """The columns every new task gets the same way (clock, initial state)."""
        now = self._clock()
        return {
            "status": PENDING,
            "attempts": 0,
            "cancel_requested": False,
            "run_at": self._due_at(),
            "created_at": now,
            "updated_at": now,
        }

    def _new_task_params(self, new: NewTask) -> dict[str, Any]:
        keyed = new.idempotency_key is not None
        return {
            "name": new.name,
            "queue": new.queue,
            "payload": new.payload,
            "max_attempts": new.max_attempts,
            "timeout_seconds": new.timeout_seconds,
            "idempotency_key": new.idempotency_key,
            "idempotency_scope": key_scope(new) if keyed else None,
            "request_hash": new.request_hash if keyed else None,
            "request_id": new.request_id,
            "created_by": new.created_by,
            "p_run_at": new.run_at.astimezone(UTC) if new.run_at is not None else None,
            "p_delay": float(new.delay_seconds or 0),
        }

    def _due_at(self) -> ColumnElement[datetime]:
        """A new task's run_at: the ``p_run_at`` given, else ``p_delay`` seconds from now."""
        return func.coalesce(
            bindparam("p_run_at", type_=Timestamp),
            self._later_by(bindparam("p_delay", type_=Float)),
        )

    async def _enqueue_keyed(
        self,
        conn: AsyncConnection,
        keyed: Sequence[tuple[int, NewTask]],
        claims: Sequence[datetime | None],
    ) -> dict[int, Enqueued]:
        """Keyed tasks in three statements whatever their number: look the keys up, insert
        the new ones (a conflict with a concurrent insert does nothing), look up again
        the ones a concurrent transaction won.

        Keys go in sorted order, so two transactions inserting overlapping keys wait
        for each other in the same order and cannot deadlock. A key sent twice in one
        batch makes one task. A key whose task came from a request with another body
        (``request_hash``) is a mismatch, answered 409 by the API."""
        first: dict[tuple[str, str], tuple[int, NewTask]] = {}
        for index, new in sorted(keyed, key=lambda item: _key_of(item[1])):
            first.setdefault(_key_of(new), (index, new))
        found = await self._by_keys(conn, list(first))
        missing = [item for key, item in first.items() if key not in found]
        if missing:
            rows = (
                (
                    await conn.execute(
                        self._on_key_conflict_do_nothing(
                            self._insert_task()
                            .values(**self._new_task_values())
                            .returning(*tasks.c)
                        ),
                        [self._new_task_params(new) for _, new in missing],
                    )
                )
                .mappings()
                .all()
            )
            created = {(row["idempotency_scope"], row["idempotency_key"]): row for row in rows}
            ordered = [created[_key_of(new)] for _, new in missing if _key_of(new) in created]
            entries = await self._dispatch(
                conn, ordered, [claims[index] for index, new in missing if _key_of(new) in created]
            )
            new_ones: dict[tuple[str, str], Enqueued] = {}
            for row, entry in zip(ordered, entries, strict=True):
                key = (row["idempotency_scope"], row["idempotency_key"])
                new_ones[key] = Enqueued(row_to_task(row), created=True, outbox=entry)
            lost = [_key_of(new) for _, new in missing if _key_of(new) not in created]
            # Another transaction inserted these keys and has committed by now: READ
            # COMMITTED lets this statement see its rows.
            found |= await self._by_keys(conn, lost) if lost else {}
        else:
            new_ones = {}
        results: dict[int, Enqueued] = {}
        for index, new in keyed:
            key = _key_of(new)
            made = new_ones.get(key)
            if made is not None and first[key][0] == index:
                results[index] = made
                continue
            task = made.task if made is not None else found.get(key)
            if task is None:  # pragma: no cover - the winner's row is committed
                raise InvalidTransition("idempotency key conflict could not be resolved")
            results[index] = Enqueued(
                task, created=False, mismatch=_mismatch(task.request_hash, new.request_hash)
            )
        return results

    def _insert_task(self) -> Any:
        return insert(tasks)

    def _on_key_conflict_do_nothing(self, stmt: Any) -> Any:
        return stmt.on_conflict_do_nothing(
            index_elements=[tasks.c.idempotency_scope, tasks.c.idempotency_key]
        )

    async def _by_keys(
        self, conn: AsyncConnection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Task]:
        if not keys:
            return {}
        stmt = select(tasks).where(
            tuple_(tasks.c.idempotency_scope, tasks.c.idempotency_key).in_(list(keys))
        )
        rows = (await conn.execute(stmt)).mappings().all()
        return {
            (row["idempotency_scope"], row["idempotency_key"]): row_to_task(row) for row in rows
        }

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
        """One guarded statement decides: a pending task is cancelled, a running one is
        asked to stop; whatever happened to the task meanwhile, the answer is its state
        at that statement (two statements left a window where a task moving between
        pending and processing was found in neither, and refused)."""
        clock = self._clock()
        pending, running = tasks.c.status == PENDING, tasks.c.status == PROCESSING
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status.in_([PENDING, PROCESSING]))
            .values(
                status=case((pending, CANCELLED), else_=tasks.c.status),
                cancel_requested=case((running, True), else_=tasks.c.cancel_requested),
                finished_at=case((pending, clock), else_=tasks.c.finished_at),
                updated_at=clock,
            )
            .returning(*tasks.c)
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:
                await self._explain_refusal(conn, task_id, "cancelled")
                raise AssertionError("unreachable")  # pragma: no cover
            if row["status"] == CANCELLED:
                await conn.execute(delete(outbox).where(outbox.c.task_id == task_id))
        return row_to_task(row)

    async def retry(self, task_id: int) -> Task:
        now = self._clock()
        async with self._tx() as conn:
            row = (
                (
                    await conn.execute(
                        update(tasks)
                        .where(tasks.c.id == task_id, tasks.c.status.in_([FAILED, CANCELLED]))
                        .values(
                            status=PENDING,
                            attempts=0,
                            worker_id=None,
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
    async def claim_many(
        self,
        task_ids: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task | None]:
        if not task_ids or not handlers:
            return [None] * len(task_ids)
        now, clock = self._now(), self._clock()
        default_max = case(dict(handlers), value=tasks.c.name)
        answers: list[Task | None] = []
        async with self._tx() as conn:
            for task_id in task_ids:
                stmt = (
                    update(tasks)
                    .where(
                        tasks.c.id == task_id,
                        tasks.c.status == PENDING,
                        tasks.c.run_at <= now,
                        tasks.c.name.in_(list(handlers)),
                    )
                    .values(
                        status=PROCESSING,
                        attempts=tasks.c.attempts + 1,
                        run_token=tasks.c.run_token + 1,
                        max_attempts=func.coalesce(tasks.c.max_attempts, default_max),
                        worker_id=worker_id,
                        lease_expires_at=self._later(lease_seconds),
                        started_at=clock,
                        updated_at=clock,
                    )
                    .returning(*tasks.c)
                )
                row = (await conn.execute(stmt)).mappings().first()
                answers.append(row_to_task(row) if row else None)
        return answers

    @staticmethod
    def _owned(run: RunRef) -> ColumnElement[bool]:
        """The guard of every statement a run makes: still running, under its token."""
        return and_(
            tasks.c.id == run.task_id,
            tasks.c.status == PROCESSING,
            tasks.c.run_token == run.token,
        )

    async def heartbeat(self, runs: Sequence[RunRef], lease_seconds: float) -> dict[RunRef, bool]:
        if not runs:
            return {}
        keys = list({(run.task_id, run.token) for run in runs})
        stmt = (
            update(tasks)
            .where(
                tasks.c.status == PROCESSING,
                tuple_(tasks.c.id, tasks.c.run_token).in_(keys),
            )
            .values(lease_expires_at=self._later(lease_seconds))
            .returning(tasks.c.id, tasks.c.run_token, tasks.c.cancel_requested)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        kept = {(row.id, row.run_token): bool(row.cancel_requested) for row in rows}
        return {run: kept[key] for run in runs if (key := (run.task_id, run.token)) in kept}

    def _finish_stmt(self, run: RunRef, **values: Any) -> Any:
        clock = self._clock()
        return (
            update(tasks)
            .where(self._owned(run))
            .values(lease_expires_at=None, finished_at=clock, updated_at=clock, **values)
            .returning(tasks.c.id)
        )

    async def _finish(self, run: RunRef, **values: Any) -> bool:
        async with self._tx() as conn:
            return (await conn.execute(self._finish_stmt(run, **values))).first() is not None

    async def complete_many(self, completions: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        answers: list[bool] = []
        async with self._tx() as conn:
            for run, result in completions:
                stmt = self._finish_stmt(
                    run, status=DONE, result=result, error=None, traceback=None
                )
                answers.append((await conn.execute(stmt)).first() is not None)
        return answers

    async def fail(self, run: RunRef, error: str, traceback: str | None) -> bool:
        return await self._finish(run, status=FAILED, error=error, traceback=traceback)

    async def mark_cancelled(self, run: RunRef) -> bool:
        return await self._finish(run, status=CANCELLED, error="cancelled on request")

    async def _back_to_pending(
        self, run: RunRef, run_at: ColumnElement[datetime], **values: Any
    ) -> TaskStatus | None:
        clock = self._clock()
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
        return TaskStatus(row["status"])

    async def retry_later(
        self, run: RunRef, error: str, traceback: str | None, delay_seconds: float
    ) -> TaskStatus | None:
        return await self._back_to_pending(
            run, self._later(delay_seconds), error=error, traceback=traceback
        )

    async def release(self, run: RunRef) -> TaskStatus | None:
        return await self._back_to_pending(run, self._clock(), attempts=tasks.c.attempts - 1)

    async def dispatch_later(self, task_ids: Sequence[int], delay_seconds: float) -> list[int]:
        if not task_ids:
            return []
        stmt = (
            update(tasks)
            .where(tasks.c.id.in_(list(task_ids)), tasks.c.status == PENDING)
            .values(updated_at=self._clock())
            .returning(tasks.c.id, tasks.c.queue, tasks.c.name)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
            if rows:
                available = self._later(delay_seconds)
                await conn.execute(
                    insert(outbox).values(available_at=available),
                    [{"task_id": r.id, "queue": r.queue, "name": r.name} for r in rows],
                )
        return sorted(row.id for row in rows)

    async def fail_unrunnable(self, task_id: int, error: str) -> bool:
        clock = self._clock()
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

    # -- the worker registry -------------------------------------------------------
    async def register_worker(self, worker: WorkerInfo) -> None:
        values = {
            "host": worker.host,
            "pid": worker.pid,
            "queues": list(worker.queues),
            "handlers": list(worker.handlers),
            "concurrency": worker.concurrency,
            "running": worker.running,
            "started_at": worker.started_at,
            "last_seen_at": self._clock(),
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
                last_seen_at=self._clock(),
                expires_at=self._later(lease_seconds),
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
            stmt = stmt.where(workers.c.expires_at > self._now())
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_worker(row) for row in rows]

    async def prune_workers(self, expired_for_seconds: float) -> int:
        stmt = (
            delete(workers)
            .where(workers.c.expires_at < self._ago(expired_for_seconds))
            .returning(workers.c.id)
        )
        async with self._tx() as conn:
            return len((await conn.execute(stmt)).all())

    # -- maintenance ---------------------------------------------------------------
    async def rescue_expired(self, limit: int) -> list[RescuedTask]:
        now, clock = self._now(), self._clock()
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
            .where(
                tasks.c.id.in_(expired),
                tasks.c.status == PROCESSING,
                tasks.c.lease_expires_at < now,
            )
            .values(
                status=case((asked, CANCELLED), (exhausted, FAILED), else_=PENDING),
                error="lease expired: the worker stopped heartbeating",
                finished_at=case((or_(asked, exhausted), clock), else_=None),
                run_at=clock,
                worker_id=None,
                lease_expires_at=None,
                updated_at=clock,
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

    def _stale(self, older_than_seconds: float) -> ColumnElement[bool]:
        """Due pending tasks whose message went out at least that long ago (they became
        due then, and nothing touched them since) and that have no outbox row."""
        cutoff = self._ago(older_than_seconds)
        return and_(
            tasks.c.status == PENDING,
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
            .values(updated_at=self._clock())
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
                count(and_(processing, tasks.c.started_at < self._ago(stuck_after_seconds))).label(
                    "stuck"
                ),
                func.min(case((due, tasks.c.run_at), else_=None)).label("oldest_pending_at"),
            )
            .where(tasks.c.status.in_([PENDING, PROCESSING]))
            .group_by(tasks.c.queue)
        )
        finished = (
            select(tasks.c.queue, tasks.c.status, func.count().label("n"))
            .where(tasks.c.finished_at >= self._ago(3600))
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
                        .values(name=name, scope=scope, key_hash=key_hash, created_at=self._clock())
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
            .values(revoked_at=self._clock())
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
    async def claim_outbox(
        self, limit: int, claim_seconds: float, *, skip_queues: Sequence[str] = ()
    ) -> list[OutboxEntry]:
        now = self._now()
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
