"""Tasks from the API's side: enqueue (idempotency keys included), read, cancel, retry.

Tasks without a key go in through the store's own plain insert (``_insert_plain``: one
statement per database); keyed ones through the statements here, on both databases.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Float, Integer, Text

from krolik.errors import IdempotencyConflict, InvalidTransition, TaskNotFound
from krolik.store.records import Attempt, Enqueued, NewTask, Task, TaskFilter
from krolik.store.sql.core import CANCELLED, EXPIRED, FAILED, PENDING, PROCESSING, SqlCore
from krolik.store.sql.rows import row_to_attempt, row_to_task
from krolik.store.tables import Timestamp, attempts, handlers, outbox, queues, tasks


def key_scope(new: NewTask) -> str:
    """Whose key it is: idempotency keys of different callers never meet."""
    return new.created_by or ""


def _key_of(new: NewTask) -> tuple[str, str]:
    return key_scope(new), new.idempotency_key or ""


def _unique_of(new: NewTask) -> tuple[str, str]:
    return new.name, new.unique_key or ""


def _mismatch(stored: str | None, sent: str | None) -> bool:
    """A key reused with another body. A task stored before fingerprints were kept, or a
    caller that sent none, matches anything."""
    return stored is not None and sent is not None and stored != sent


class TaskStatements(SqlCore):
    async def enqueue(
        self,
        new_tasks: Sequence[NewTask],
        *,
        claim_outbox_seconds: float | None = None,
        refuse_mismatch: bool = False,
    ) -> list[Enqueued]:
        """Tasks without an idempotency key go in with the store's plain insert (one
        statement); keyed ones with a few statements for all of them (``_enqueue_keyed``)."""
        if any(new.idempotency_key is not None and new.unique_key is not None for new in new_tasks):
            raise ValueError("a task has an idempotency key or a unique key, not both")
        results: dict[int, Enqueued] = {}
        plain = [(i, new) for i, new in enumerate(new_tasks) if new.is_plain]
        keyed = [(i, new) for i, new in enumerate(new_tasks) if new.idempotency_key is not None]
        unique = [
            (i, new)
            for i, new in enumerate(new_tasks)
            if new.idempotency_key is None and new.unique_key is not None
        ]
        claims = self._claimed_until(new_tasks, claim_outbox_seconds)
        async with self._tx() as conn:
            if unique:
                results.update(await self._enqueue_unique(conn, unique, claims))
            if plain:
                made = await self._insert_plain(
                    conn, [new for _, new in plain], claim_outbox_seconds
                )
                results.update(zip((index for index, _ in plain), made, strict=True))
            if keyed:
                results.update(await self._enqueue_keyed(conn, keyed, claims))
                mismatched = [new.idempotency_key for i, new in keyed if results[i].mismatch]
                if refuse_mismatch and mismatched:
                    raise IdempotencyConflict(
                        "these idempotency keys were used before with a different "
                        f"request body: {', '.join(map(repr, mismatched))}"
                    )
        return [results[index] for index in range(len(new_tasks))]

    @abstractmethod
    async def _insert_plain(
        self, conn: AsyncConnection, new_tasks: Sequence[NewTask], claim_seconds: float | None
    ) -> list[Enqueued]:
        """Insert tasks without a key and their outbox rows, on ``conn`` (in its
        transaction), in order; with ``claim_seconds``, the rows of tasks due at once are
        written claimed for the caller (see ``TaskStore.enqueue``)."""

    def _new_task_values(self) -> dict[str, Any]:
        """The columns every new task gets the same way (clock, initial state)."""
        now = self.dialect.clock()
        return {
            "status": PENDING,
            "attempts": 0,
            "cancel_requested": False,
            "run_at": self._due_at(),
            "expires_at": self._expires_at(),
            "unique_until": self._unique_until(),
            "priority": self._priority(),
            "created_at": now,
            "updated_at": now,
        }

    def _new_task_params(self, new: NewTask) -> dict[str, Any]:
        keyed = new.idempotency_key is not None
        unique = new.unique_key is not None
        return {
            "unique_key": new.unique_key,
            "unique_running": unique and new.unique_running,
            "p_unique_for": new.unique_for_seconds if unique else None,
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
            "webhook_url": new.webhook_url,
            "traceparent": new.traceparent,
            "p_run_at": new.run_at.astimezone(UTC) if new.run_at is not None else None,
            "p_delay": float(new.delay_seconds or 0),
            "p_expires_at": new.expires_at.astimezone(UTC) if new.expires_at is not None else None,
            "p_expires_in": new.expires_in_seconds,
            "p_priority": new.priority,
            "p_handler": new.name,
            "p_queue": new.queue,
            "concurrency_key": new.concurrency_key,
        }

    def _due_at(self) -> ColumnElement[datetime]:
        """A new task's run_at: the ``p_run_at`` given, else ``p_delay`` seconds from now."""
        return func.coalesce(
            bindparam("p_run_at", type_=Timestamp),
            self.dialect.later_by(bindparam("p_delay", type_=Float)),
        )

    def _priority(self) -> ColumnElement[int]:
        """A new task's priority: the ``p_priority`` given, else its handler's default,
        else its queue's, else 0 (defaults are data: the API has no handlers to ask)."""
        return func.coalesce(
            bindparam("p_priority", type_=Integer),
            select(handlers.c.priority)
            .where(handlers.c.name == bindparam("p_handler", type_=Text))
            .scalar_subquery(),
            select(queues.c.default_priority)
            .where(queues.c.name == bindparam("p_queue", type_=Text))
            .scalar_subquery(),
            0,
        )

    def _expires_at(self) -> ColumnElement[datetime]:
        """A new task's expires_at: the ``p_expires_at`` given, else ``p_expires_in``
        seconds from now, else none."""
        # Each parameter once: a batch inserted as one multi-row statement numbers them
        # per row, and a parameter written twice in an expression breaks that count.
        return func.coalesce(
            bindparam("p_expires_at", type_=Timestamp),
            self.dialect.later_by(bindparam("p_expires_in", type_=Float)),
        )

    def _unique_until(self) -> ColumnElement[datetime]:
        return self.dialect.later_by(bindparam("p_unique_for", type_=Float))

    async def _enqueue_unique(
        self,
        conn: AsyncConnection,
        unique: Sequence[tuple[int, NewTask]],
        claims: Sequence[datetime | None],
    ) -> dict[int, Enqueued]:
        """Unique tasks in a few statements whatever their number: let go of holders of
        these keys that hold them no more, insert the new ones (a key still held makes
        nothing: ON CONFLICT DO NOTHING), then give back each held key's holder, or, to
        a submit that asks to replace, the pending holder with the new payload and run
        time (its outbox row written again for that time).

        Keys go in sorted order (no deadlock between two batches); a key sent twice in one
        batch makes one task."""
        first: dict[tuple[str, str], tuple[int, NewTask]] = {}
        for index, new in sorted(unique, key=lambda item: _unique_of(item[1])):
            first.setdefault(_unique_of(new), (index, new))
        keys = list(first)
        await conn.execute(
            update(tasks)
            .where(tuple_(tasks.c.name, tasks.c.unique_key).in_(keys), ~self._holding())
            .values(unique_key=None)
        )
        rows = (
            (
                await conn.execute(
                    self.dialect.insert(tasks)
                    .values(**self._new_task_values())
                    .on_conflict_do_nothing(
                        index_elements=[tasks.c.name, tasks.c.unique_key],
                        index_where=tasks.c.unique_key.is_not(None),
                    )
                    .returning(*tasks.c),
                    [self._new_task_params(new) for _, new in first.values()],
                )
            )
            .mappings()
            .all()
        )
        created = {(row["name"], row["unique_key"]): row for row in rows}
        ordered = [created[key] for key in keys if key in created]
        entries = await self._dispatch(
            conn, ordered, [claims[first[key][0]] for key in keys if key in created]
        )
        made = {
            (row["name"], row["unique_key"]): Enqueued(row_to_task(row), created=True, outbox=e)
            for row, e in zip(ordered, entries, strict=True)
        }
        holders = await self._holders(conn, [key for key in keys if key not in created])
        results: dict[int, Enqueued] = {}
        for index, new in unique:
            key = _unique_of(new)
            if key in made and first[key][0] == index:
                results[index] = made[key]
                continue
            holder = made[key].task if key in made else holders.get(key)
            if holder is None:  # pragma: no cover - a holder is committed or ours
                raise InvalidTransition("unique key conflict could not be resolved")
            if new.unique_replace and first[key][0] == index and key not in made:
                replaced = await self._replace_pending(conn, holder.id, new)
                if replaced is not None:
                    results[index] = Enqueued(replaced, created=False, replaced=True)
                    continue
            results[index] = Enqueued(holder, created=False)
        return results

    def _holding(self) -> ColumnElement[bool]:
        """A task still holding its unique key: pending, running if it said so, or
        within its window."""
        return or_(
            tasks.c.status == PENDING,
            and_(tasks.c.status == PROCESSING, tasks.c.unique_running),
            and_(tasks.c.unique_until.is_not(None), tasks.c.unique_until > self.dialect.now()),
        )

    async def _holders(
        self, conn: AsyncConnection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Task]:
        if not keys:
            return {}
        stmt = select(tasks).where(tuple_(tasks.c.name, tasks.c.unique_key).in_(list(keys)))
        rows = (await conn.execute(stmt)).mappings().all()
        return {(row["name"], row["unique_key"]): row_to_task(row) for row in rows}

    async def _replace_pending(
        self, conn: AsyncConnection, task_id: int, new: NewTask
    ) -> Task | None:
        """The pending holder takes ``new``'s payload and run time, and a new outbox row for
        that time (a message already out finds it not due and is dropped)."""
        params = self._new_task_params(new)
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == PENDING)
            .values(
                payload=bindparam("p_payload", type_=tasks.c.payload.type),
                run_at=self._due_at(),
                updated_at=self.dialect.clock(),
            )
            .returning(*tasks.c)
        )
        row = (
            (
                await conn.execute(
                    stmt,
                    {
                        "p_payload": new.payload,
                        "p_run_at": params["p_run_at"],
                        "p_delay": params["p_delay"],
                    },
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        await conn.execute(delete(outbox).where(outbox.c.task_id == task_id))
        await self._dispatch(conn, [row])
        return row_to_task(row)

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
                            self.dialect.insert(tasks)
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

    async def get_many(self, task_ids: Sequence[int]) -> list[Task]:
        if not task_ids:
            return []
        stmt = select(tasks).where(tasks.c.id.in_(list(task_ids)))
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [row_to_task(row) for row in rows]

    async def attempts_of(self, task_id: int) -> list[Attempt]:
        stmt = (
            select(attempts)
            .where(attempts.c.task_id == task_id)
            .order_by(attempts.c.run_token, attempts.c.id)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [row_to_attempt(row) for row in rows]

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
        clock = self.dialect.clock()
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
        now = self.dialect.clock()
        async with self._tx() as conn:
            row = (
                (
                    await conn.execute(
                        update(tasks)
                        .where(
                            tasks.c.id == task_id,
                            tasks.c.status.in_([FAILED, CANCELLED, EXPIRED]),
                        )
                        .values(
                            status=PENDING,
                            attempts=0,
                            worker_id=None,
                            result=None,
                            error=None,
                            traceback=None,
                            cancel_requested=False,
                            run_at=now,
                            expires_at=None,
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
