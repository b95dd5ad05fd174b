"""The claims of gated queues, the held tasks' wake-up, and the gates as data.

A gated queue's claim is one transaction that first locks the queue's row (``FOR
UPDATE``; SQLite has one writer anyway) and then, in statements that see every claim
committed before it, counts what runs and what started in the rate window, picks the
best tasks among those the message named and those held (priority, then age, within
each key's room), claims them and holds the rest with their reason. The lock is what
makes a cap exact across workers: two claims of the queue never count the same free
slot. Ungated queues never take it. On PostgreSQL the claims themselves are the same
steps in PL/pgSQL functions (migration 0013), one round trip each; what is here serves
SQLite, the wake-up and the claim of the best in ungated queues.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from krolik.flow import GATE_FIELDS, LIMIT_FIELDS, Hold, QueueGates, Rate
from krolik.store.records import Task
from krolik.store.sql.core import PENDING, PROCESSING, SqlCore
from krolik.store.sql.rows import aware, row_to_task
from krolik.store.tables import handlers, queue_starts, queues, tasks

WAKE_BATCH = 1000
"""Held tasks dispatched again per statement when a gate opens wide (a resume)."""


def gated(table: Any = queues) -> ColumnElement[bool]:
    """Whether the queue row says its claims go through the gates."""
    return or_(
        table.c.paused,
        table.c.max_running.is_not(None),
        table.c.max_running_per_key.is_not(None),
        table.c.rate_limit.is_not(None),
    )


def with_rate_numbers(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the rate limit's amount and window beside its text, when it is
    among them (the claim on PostgreSQL counts the window in SQL)."""
    answer = dict(values)
    if "rate_limit" in values:
        rate = None if values["rate_limit"] is None else Rate.parse(values["rate_limit"])
        answer["rate_amount"] = None if rate is None else rate.amount
        answer["rate_window_seconds"] = None if rate is None else rate.window_seconds
    return answer


def gates_of(row: Mapping[Any, Any] | None, name: str) -> QueueGates:
    if row is None:
        return QueueGates(name)
    return QueueGates(
        name=row["name"],
        paused=bool(row["paused"]),
        max_running=row["max_running"],
        max_running_per_key=row["max_running_per_key"],
        rate_limit=row["rate_limit"],
        default_priority=row["default_priority"],
        updated_at=aware(row["updated_at"]),
    )


class FlowStatements(SqlCore):
    def _claim_values(
        self, worker_id: str, lease_seconds: float, handlers: Mapping[str, int]
    ) -> dict[str, Any]:
        """What a claim writes: the next fencing token, the handler's default attempts."""
        clock = self.dialect.clock()
        return {
            "status": PROCESSING,
            "attempts": tasks.c.attempts + 1,
            "run_token": tasks.c.run_token + 1,
            "max_attempts": func.coalesce(
                tasks.c.max_attempts, case(dict(handlers), value=tasks.c.name)
            ),
            "worker_id": worker_id,
            "lease_expires_at": self.dialect.later(lease_seconds),
            "started_at": clock,
            "updated_at": clock,
            "progress": None,
            "held": None,
        }

    def _outranked(self) -> ColumnElement[bool]:
        """A task of higher priority is due in the task's queue (the plain claim leaves
        such a task to ``_claim_outranked``)."""
        better = tasks.alias("better")
        now = self.dialect.now()
        return exists().where(
            better.c.queue == tasks.c.queue,
            better.c.status == PENDING,
            better.c.priority > 0,
            better.c.priority > tasks.c.priority,
            better.c.run_at <= now,
            or_(better.c.expires_at.is_(None), better.c.expires_at > now),
        )

    def _claimable(self, names: Sequence[str]) -> ColumnElement[bool]:
        now = self.dialect.now()
        return and_(
            tasks.c.status == PENDING,
            tasks.c.run_at <= now,
            tasks.c.name.in_(list(names)),
            or_(tasks.c.expires_at.is_(None), tasks.c.expires_at > now),
        )

    # -- claims --------------------------------------------------------------------
    async def _with_gated_claims(
        self,
        task_ids: Sequence[int],
        answers: list[Task | None],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task | None]:
        """The plain claim's answers, with the ids it refused tried again: through their
        queue's gates (per queue, as many of the best waiting tasks as the gates allow),
        or, in an ungated queue, against the tasks of higher priority due there. What
        that claims (maybe not the named tasks) fills the places of the refused ids."""
        refused = [task_id for task_id, task in zip(task_ids, answers, strict=True) if not task]
        if not refused or not handlers:
            return answers
        # Which of them could start at all, and whether their queue is gated: one read.
        stmt = (
            select(tasks.c.id, tasks.c.queue, queues.c.name.is_not(None).label("gated"))
            .outerjoin(queues, and_(queues.c.name == tasks.c.queue, gated()))
            .where(tasks.c.id.in_(refused), self._claimable(list(handlers)))
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        by_queue: dict[str, list[int]] = {}
        for row in rows:
            if row.gated:
                by_queue.setdefault(row.queue, []).append(row.id)
        outranked = [row.id for row in rows if not row.gated]
        second: list[Task] = []
        for queue, ids in sorted(by_queue.items()):
            async with self._tx() as conn:
                claimed = await self._claim_in_queue(
                    conn, queue, ids, worker_id, lease_seconds, handlers
                )
            second += [replace(task, gated=True) for task in claimed]
        if outranked:
            second += await self._claim_outranked(outranked, worker_id, lease_seconds, handlers)
        answered = iter(second)
        return [task or next(answered, None) for task in answers]

    async def _claim_outranked(
        self,
        task_ids: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task]:
        """Named tasks of ungated queues that a plain claim refused because a task of
        higher priority is due in their queue: as many of the queue's best due tasks are
        claimed instead (SKIP LOCKED), and the named ones left over are dispatched again.
        A high-priority task so starts in the next free slot, not after every message
        RabbitMQ already holds for the queue. The better task may have been claimed
        meanwhile: the best are then the named ones themselves, claimed as they are."""
        if not task_ids or not handlers:
            return []
        names = list(handlers)
        hints = (
            select(tasks.c.id, tasks.c.queue)
            .where(
                tasks.c.id.in_(list(task_ids)),
                self._claimable(names),
                ~exists().where(queues.c.name == tasks.c.queue, gated()),
            )
            .with_for_update(skip_locked=True)
        )
        claimed: list[Task] = []
        async with self._tx() as conn:
            by_queue: dict[str, list[int]] = {}
            for row in (await conn.execute(hints)).all():
                by_queue.setdefault(row.queue, []).append(row.id)
            for queue, named in sorted(by_queue.items()):
                best = (
                    select(tasks.c.id)
                    .where(tasks.c.queue == queue, self._claimable(names))
                    .order_by(tasks.c.priority.desc(), tasks.c.run_at, tasks.c.id)
                    .limit(len(named))
                    .with_for_update(skip_locked=True)
                )
                chosen = list((await conn.execute(best)).scalars().all())
                stmt = (
                    update(tasks)
                    .where(tasks.c.id.in_(chosen), self._claimable(names))
                    .values(**self._claim_values(worker_id, lease_seconds, handlers))
                    .returning(*tasks.c)
                )
                got = [row_to_task(row) for row in (await conn.execute(stmt)).mappings().all()]
                claimed += got
                taken = {task.id for task in got}
                displaced = (
                    (
                        await conn.execute(
                            select(tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.run_at).where(
                                tasks.c.id.in_([i for i in named if i not in taken]),
                                tasks.c.status == PENDING,
                            )
                        )
                    )
                    .mappings()
                    .all()
                )
                if displaced:
                    await self._dispatch(conn, displaced)
        return sorted(claimed, key=lambda task: task.id)

    async def _lock_gates(self, conn: AsyncConnection, queue: str) -> QueueGates:
        row = (
            (await conn.execute(select(queues).where(queues.c.name == queue).with_for_update()))
            .mappings()
            .first()
        )
        return gates_of(row, queue)

    async def _room(
        self, conn: AsyncConnection, gates: QueueGates, wanted: int
    ) -> tuple[int, Hold | None]:
        """How many may start now (at most ``wanted``), and the gate that bounds it."""
        if gates.paused:
            return 0, Hold.PAUSED
        room, bound = wanted, None
        if gates.max_running is not None:
            running = await self._count(
                conn, and_(tasks.c.queue == gates.name, tasks.c.status == PROCESSING)
            )
            free = max(0, gates.max_running - running)
            if free < room:
                room, bound = free, Hold.MAX_RUNNING
        rate = gates.rate
        if rate is not None:
            await conn.execute(
                delete(queue_starts).where(
                    queue_starts.c.queue == gates.name,
                    queue_starts.c.slice_at <= self.dialect.ago(rate.counted_seconds),
                )
            )
            used = await self._count_starts(conn, gates.name)
            free = max(0, rate.amount - used)
            if free < room:
                room, bound = free, Hold.RATE_LIMIT
        return room, bound

    async def _count(self, conn: AsyncConnection, condition: ColumnElement[bool]) -> int:
        stmt = select(func.count()).select_from(tasks).where(condition)
        return int((await conn.execute(stmt)).scalar_one())

    async def _count_starts(self, conn: AsyncConnection, queue: str) -> int:
        stmt = select(func.coalesce(func.sum(queue_starts.c.starts), 0)).where(
            queue_starts.c.queue == queue
        )
        return int((await conn.execute(stmt)).scalar_one())

    async def _pick(
        self,
        conn: AsyncConnection,
        gates: QueueGates,
        room: int,
        names: Sequence[str],
        named: Sequence[int] = (),
        walked: Sequence[str] = (),
        every_held: bool = False,
    ) -> tuple[list[int], set[str]]:
        """Up to ``room`` tasks to start: the best of those ``named``, those held and
        those of the keys ``walked`` (or, ``every_held``, every held one of a queue with a
        limit per key), each key within its room. Also the keys at their limit once these
        start."""
        if room <= 0:
            return [], set()
        # The pool: the named tasks (by id) and the held ones (by their index), read
        # apart: one condition with OR would read every pending task of the queue.
        candidates = self._claimable(names)
        columns = (tasks.c.id, tasks.c.concurrency_key, tasks.c.priority, tasks.c.run_at)
        order = (tasks.c.priority.desc(), tasks.c.run_at, tasks.c.id)
        per_key = gates.max_running_per_key
        held = select(*columns).where(
            tasks.c.queue == gates.name, tasks.c.held.is_not(None), candidates
        )
        if per_key is None or not every_held:
            held = held.order_by(*order).limit(room)
        parts = [
            select(*columns).where(tasks.c.id.in_(list(named)), candidates),
            held.subquery().select(),
        ]
        if per_key is not None:
            for key in walked:
                parts.append(
                    select(*columns)
                    .where(tasks.c.queue == gates.name, tasks.c.concurrency_key == key, candidates)
                    .order_by(*order)
                    .limit(min(room, per_key))
                    .subquery()
                    .select()
                )
        pool = union(*parts).subquery()
        if per_key is None:
            stmt = (
                select(pool.c.id)
                .order_by(pool.c.priority.desc(), pool.c.run_at, pool.c.id)
                .limit(room)
            )
            return list((await conn.execute(stmt)).scalars().all()), set()
        running: dict[str, int] = dict(
            (
                await conn.execute(
                    select(tasks.c.concurrency_key, func.count())
                    .where(
                        tasks.c.queue == gates.name,
                        tasks.c.status == PROCESSING,
                        tasks.c.concurrency_key.is_not(None),
                    )
                    .group_by(tasks.c.concurrency_key)
                )
            ).all()
        )
        # Each key's best ``per_key`` waiting tasks at most: no key can fill the room
        # whatever its backlog, so a small tenant is not left behind a big one.
        rank = (
            func.row_number()
            .over(
                partition_by=pool.c.concurrency_key,
                order_by=(pool.c.priority.desc(), pool.c.run_at, pool.c.id),
            )
            .label("rank")
        )
        ranked = select(*pool.c, rank).subquery()
        stmt = (
            select(ranked.c.id, ranked.c.concurrency_key)
            .where(or_(ranked.c.concurrency_key.is_(None), ranked.c.rank <= per_key))
            .order_by(ranked.c.priority.desc(), ranked.c.run_at, ranked.c.id)
        )
        chosen: list[int] = []
        for task_id, key in (await conn.execute(stmt)).all():
            if len(chosen) >= room:
                break
            if key is not None:
                if running.get(key, 0) >= per_key:
                    continue
                running[key] = running.get(key, 0) + 1
            chosen.append(task_id)
        return chosen, {key for key, count in running.items() if count >= per_key}

    async def _walk_keys(self, conn: AsyncConnection, gates: QueueGates, room: int) -> list[str]:
        """The keys with pending tasks, walked round from the one after the last served
        (``key_cursor``): as many as may start plus those at their limit. A key whose
        messages are queued behind another's backlog is reached all the same."""
        per_key = gates.max_running_per_key
        if per_key is None or room <= 0:
            return []
        running = (
            select(tasks.c.concurrency_key)
            .where(
                tasks.c.queue == gates.name,
                tasks.c.status == PROCESSING,
                tasks.c.concurrency_key.is_not(None),
            )
            .group_by(tasks.c.concurrency_key)
            .having(func.count() >= per_key)
            .subquery()
        )
        want = room + int(
            (await conn.execute(select(func.count()).select_from(running))).scalar_one()
        )
        cursor = (
            await conn.execute(select(queues.c.key_cursor).where(queues.c.name == gates.name))
        ).scalar_one_or_none()
        walked: list[str] = []
        after, wrapped = cursor, False
        while len(walked) < want:
            condition = and_(
                tasks.c.queue == gates.name,
                tasks.c.status == PENDING,
                tasks.c.concurrency_key.is_not(None),
            )
            if after is not None:
                condition = and_(condition, tasks.c.concurrency_key > after)
            step = (
                await conn.execute(select(func.min(tasks.c.concurrency_key)).where(condition))
            ).scalar_one_or_none()
            if step is None:
                if wrapped or cursor is None:
                    break
                after, wrapped = None, True
                continue
            if wrapped and step > cursor:
                break
            walked.append(step)
            after = step
        return walked

    async def _move_key_cursor(
        self, conn: AsyncConnection, queue: str, walked: Sequence[str], claimed: Sequence[Task]
    ) -> None:
        """The next walk starts after the last key walked that got a start."""
        served = {task.concurrency_key for task in claimed}
        last = next((key for key in reversed(walked) if key in served), None)
        if last is not None:
            await conn.execute(update(queues).where(queues.c.name == queue).values(key_cursor=last))

    async def _claim_in_queue(
        self,
        conn: AsyncConnection,
        queue: str,
        named: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
        wanted: int | None = None,
    ) -> list[Task]:
        gates = await self._lock_gates(conn, queue)
        names = list(handlers)
        full_keys: set[str] = set()
        walked: list[str] = []
        if not gates.gated:  # the gates were lifted meanwhile: the named tasks, plainly
            chosen, bound = list(named), None
        else:
            room, bound = await self._room(conn, gates, len(named) if wanted is None else wanted)
            walked = await self._walk_keys(conn, gates, room)
            chosen, full_keys = await self._pick(conn, gates, room, names, named, walked)
        claimed: list[Task] = []
        if chosen:
            stmt = (
                update(tasks)
                .where(tasks.c.id.in_(chosen), self._claimable(names))
                .values(**self._claim_values(worker_id, lease_seconds, handlers))
                .returning(*tasks.c)
            )
            claimed = [row_to_task(row) for row in (await conn.execute(stmt)).mappings().all()]
            await self._move_key_cursor(conn, queue, walked, claimed)
            rate = gates.rate
            if claimed and rate is not None:
                count = self.dialect.insert(queue_starts).values(
                    queue=queue,
                    slice_at=self.dialect.slice_of_now(rate.slice_seconds),
                    starts=len(claimed),
                )
                await conn.execute(
                    count.on_conflict_do_update(
                        index_elements=[queue_starts.c.queue, queue_starts.c.slice_at],
                        set_={"starts": queue_starts.c.starts + count.excluded.starts},
                    )
                )
        taken = {task.id for task in claimed}
        refused = [task_id for task_id in named if task_id not in taken]
        if refused:
            await self._refuse(conn, refused, bound, full_keys)
        return sorted(claimed, key=lambda task: task.id)

    async def _refuse(
        self,
        conn: AsyncConnection,
        refused: Sequence[int],
        bound: Hold | None,
        full_keys: set[str],
    ) -> None:
        """The named tasks not started: held with their reason (a key at its limit, else
        the gate that bound the room); one that only lost its place to better tasks
        waiting, with no gate shut, is dispatched again at once instead."""
        key = tasks.c.concurrency_key
        reason: ColumnElement[Any] | None = None
        if full_keys and bound is not Hold.PAUSED:
            reason = case(
                (key.in_(sorted(full_keys)), Hold.KEY_LIMIT.value),
                else_=bound.value if bound is not None else None,
            )
        elif bound is not None:
            reason = literal(bound.value)
        pending = and_(tasks.c.id.in_(list(refused)), tasks.c.status == PENDING)
        if reason is not None:
            await conn.execute(update(tasks).where(pending).values(held=reason))
        displaced = (
            (
                await conn.execute(
                    select(tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.run_at).where(
                        pending, tasks.c.held.is_(None)
                    )
                )
            )
            .mappings()
            .all()
        )
        if displaced:
            await self._dispatch(conn, displaced)

    async def claim_held(
        self,
        queue: str,
        most: int,
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task]:
        if most <= 0 or not handlers:
            return []
        async with self._tx() as conn:
            if not await self._holds_any(conn, queue):
                return []
            claimed = await self._claim_in_queue(
                conn, queue, [], worker_id, lease_seconds, handlers, wanted=most
            )
        return [replace(task, gated=True) for task in claimed]

    # -- waking ----------------------------------------------------------------------
    async def wake(self, queue: str) -> int:
        """Dispatch again as many held tasks of ``queue`` as its gates let start now
        (all of them, a batch at a time, once the queue is no longer gated)."""
        woken = 0
        while True:
            async with self._tx() as conn:
                if not await self._holds_any(conn, queue):
                    return woken
                gates = await self._lock_gates(conn, queue)
                if gates.gated:
                    room, _ = await self._room(conn, gates, WAKE_BATCH)
                    ids, _ = await self._pick(
                        conn, gates, room, await self._held_names(conn, queue), every_held=True
                    )
                else:
                    ids = list(
                        (
                            await conn.execute(
                                select(tasks.c.id)
                                .where(
                                    tasks.c.queue == queue,
                                    tasks.c.status == PENDING,
                                    tasks.c.held.is_not(None),
                                )
                                .order_by(tasks.c.priority.desc(), tasks.c.run_at, tasks.c.id)
                                .limit(WAKE_BATCH)
                            )
                        )
                        .scalars()
                        .all()
                    )
                if not ids:
                    return woken
                rows = (
                    (
                        await conn.execute(
                            update(tasks)
                            .where(tasks.c.id.in_(ids), tasks.c.status == PENDING)
                            .values(held=None, updated_at=self.dialect.clock())
                            .returning(tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.run_at)
                        )
                    )
                    .mappings()
                    .all()
                )
                await self._dispatch(conn, rows)
            woken += len(rows)
            if gates.gated or len(ids) < WAKE_BATCH:
                return woken

    async def _holds_any(self, conn: AsyncConnection, queue: str) -> bool:
        """Whether the queue holds a task at all (read without its lock, through the index
        of held tasks): the common answer, no, costs no lock. A task held just after
        this read waits for the waker's next look."""
        stmt = (
            select(tasks.c.id)
            .where(tasks.c.queue == queue, tasks.c.status == PENDING, tasks.c.held.is_not(None))
            .limit(1)
        )
        return (await conn.execute(stmt)).first() is not None

    async def _held_names(self, conn: AsyncConnection, queue: str) -> list[str]:
        """The names of the queue's held tasks: a wake-up dispatches them for whichever
        worker serves them."""
        stmt = (
            select(tasks.c.name)
            .where(tasks.c.queue == queue, tasks.c.status == PENDING, tasks.c.held.is_not(None))
            .distinct()
        )
        return list((await conn.execute(stmt)).scalars().all())

    async def held_queues(self) -> dict[str, float | None]:
        """Queues with held tasks, each with when its rate window next frees a start
        (seconds from now; None: not rate-bound), for the waker."""
        stmt = (
            select(tasks.c.queue)
            .where(tasks.c.status == PENDING, tasks.c.held.is_not(None))
            .distinct()
        )
        answer: dict[str, float | None] = {}
        async with self._tx() as conn:
            for queue in (await conn.execute(stmt)).scalars().all():
                answer[queue] = await self._rate_frees_in(conn, queue)
        return answer

    async def _rate_frees_in(self, conn: AsyncConnection, queue: str) -> float | None:
        row = (await conn.execute(select(queues).where(queues.c.name == queue))).mappings().first()
        rate = gates_of(row, queue).rate
        if rate is None:
            return None
        oldest = (
            await conn.execute(
                select(func.min(queue_starts.c.slice_at)).where(
                    queue_starts.c.queue == queue,
                    queue_starts.c.slice_at > self.dialect.ago(rate.counted_seconds),
                )
            )
        ).scalar_one()
        if oldest is None:
            return 0.0
        frees = aware(oldest).timestamp() + rate.counted_seconds
        return float(max(0.0, frees - time.time()))

    # -- the gates as data -------------------------------------------------------------
    async def get_gates(self, queue: str) -> QueueGates:
        async with self._tx() as conn:
            row = (
                (await conn.execute(select(queues).where(queues.c.name == queue)))
                .mappings()
                .first()
            )
        return gates_of(row, queue)

    async def list_gates(self) -> list[QueueGates]:
        async with self._tx() as conn:
            rows = (await conn.execute(select(queues).order_by(queues.c.name))).mappings().all()
        return [gates_of(row, row["name"]) for row in rows]

    async def set_gates(self, queue: str, changes: Mapping[str, Any]) -> QueueGates:
        unknown = set(changes) - set(GATE_FIELDS)
        if unknown:
            raise ValueError(f"not a queue gate: {', '.join(sorted(unknown))}")
        clock = self.dialect.clock()
        changed = {**with_rate_numbers(changes), "declared": False, "updated_at": clock}
        stmt = (
            self.dialect.insert(queues)
            .values(name=queue, **changed)
            .on_conflict_do_update(index_elements=[queues.c.name], set_=changed)
            .returning(*queues.c)
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().one()
        return gates_of(row, queue)

    async def declare_gates(self, defaults: Mapping[str, Mapping[str, Any]]) -> list[str]:
        written: list[str] = []
        async with self._tx() as conn:
            for queue, limits in sorted(defaults.items()):
                values = {
                    **with_rate_numbers({**dict.fromkeys(LIMIT_FIELDS), **limits}),
                    "declared": True,
                    "updated_at": self.dialect.clock(),
                }
                stmt = (
                    self.dialect.insert(queues)
                    .values(name=queue, **values)
                    .on_conflict_do_update(
                        index_elements=[queues.c.name], set_=values, where=queues.c.declared
                    )
                    .returning(queues.c.name)
                )
                if (await conn.execute(stmt)).first() is not None:
                    written.append(queue)
        return written

    async def declare_handlers(self, priorities: Mapping[str, int | None]) -> None:
        if not priorities:
            return
        rows = [
            {"name": name, "priority": priority, "updated_at": self.dialect.clock()}
            for name, priority in sorted(priorities.items())
        ]
        stmt = self.dialect.insert(handlers).values(rows)
        async with self._tx() as conn:
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[handlers.c.name],
                    set_={
                        "priority": stmt.excluded.priority,
                        "updated_at": stmt.excluded.updated_at,
                    },
                )
            )

    async def held_counts(self) -> dict[str, dict[str, int]]:
        stmt = (
            select(tasks.c.queue, tasks.c.held, func.count())
            .where(tasks.c.status == PENDING, tasks.c.held.is_not(None))
            .group_by(tasks.c.queue, tasks.c.held)
        )
        answer: dict[str, dict[str, int]] = {}
        async with self._tx() as conn:
            for queue, held, count in (await conn.execute(stmt)).all():
                answer.setdefault(queue, {})[held] = int(count)
        return answer
