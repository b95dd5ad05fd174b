"""The transition table (``krolik.states.ALLOWED``) holds in the store, on both databases.

Every transition of ``TRANSITIONS`` is run from every state a task can be in: the
store's statements must change the task exactly when the table says the transition may
start there, and leave it only in a state the table lists. A statement that disagrees
with the table (or a table that disagrees with the statements) fails here. Every method
of the store seam is either one of those transitions or named below as changing no
task's state, so a new statement cannot go untied.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from krolik.errors import InvalidTransition, TaskNotFound
from krolik.states import ALLOWED, TRANSITIONS, TaskStatus, Transition
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, RunRef, Task
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import outbox, tasks

HANDLERS = {"echo": 3}

NOT_TRANSITIONS = {
    # reads and counts
    "get", "get_many", "attempts_of", "list_tasks", "queue_stats", "outbox_stats",
    "count_due", "count_pending",
    "stale_queues", "list_workers", "list_api_keys", "find_api_key",
    # new tasks, leases, the outbox, keys, the worker registry: no task changes state
    "enqueue", "heartbeat", "expire_all_leases", "claim_outbox", "release_outbox",
    "delete_outbox", "create_api_key", "revoke_api_key", "register_worker", "touch_worker",
    "unregister_worker", "prune_workers",
    # what a running handler reports of itself
    "record_progress",
    # webhook deliveries: their own rows, each answer guarded by its claim's attempt
    "claim_deliveries", "record_deliveries", "deliveries_of",
    # the store's word of ended tasks (PostgreSQL's NOTIFY), a hint like a change notice
    "listen_ended",
    # retention: finished tasks deleted, none changes state
    "prune", "count_prunable",
    # schedules: their own rows; due ticks make new tasks, as enqueue does
    "create_schedule", "declare_schedules", "get_schedule", "list_schedules",
    "change_schedule", "delete_schedule", "schedule_ticks", "run_due_schedules",
    "next_tick_in",
    # flow control: a queue's gates are their own rows; what they hold stays pending
    "get_gates", "list_gates", "set_gates", "declare_gates", "held_queues", "held_counts",
    # the handlers' defaults for new tasks: their own rows
    "declare_handlers",
    # the single-item forms of claim_many and complete_many; the store's own life
    "claim", "complete", "open", "close", "ping", "sibling",
}  # fmt: skip


def test_every_store_method_is_a_transition_or_changes_no_state() -> None:
    methods = {
        name
        for name, _ in inspect.getmembers(TaskStore, inspect.isfunction)
        if not name.startswith("_")
    }
    tied = set(itertools.chain.from_iterable(TRANSITIONS.values()))
    assert tied <= methods, f"TRANSITIONS names what the store lacks: {tied - methods}"
    assert not tied & NOT_TRANSITIONS
    assert methods == tied | NOT_TRANSITIONS, (
        f"untied store methods: {sorted(methods - tied - NOT_TRANSITIONS)}"
    )
    assert set(TRANSITIONS) == set(Transition)


async def make_task(store: TaskStore, status: TaskStatus) -> tuple[Task, RunRef | None]:
    """A task in ``status`` (running under a live lease), and its run when it runs."""
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=None)])
    task = enqueued.task
    if status is TaskStatus.PENDING:
        return task, None
    if status is TaskStatus.CANCELLED:
        return await store.cancel(task.id), None
    if status is TaskStatus.EXPIRED:
        await _expire(store, task, None)
        return await current(store, task.id), None
    claimed = await store.claim(task.id, "worker-a", 60, HANDLERS)
    assert claimed is not None
    run = RunRef.of(claimed)
    if status is TaskStatus.DONE:
        assert await store.complete(run, "ok")
    elif status is TaskStatus.FAILED:
        assert await store.fail(run, "boom", None)
    return await current(store, task.id), run


async def current(store: TaskStore, task_id: int) -> Task:
    task = await store.get(task_id)
    assert task is not None
    return task


async def outbox_rows(store: TaskStore, task_id: int) -> int:
    assert isinstance(store, SqlTaskStore)
    stmt = select(func.count()).select_from(outbox).where(outbox.c.task_id == task_id)
    async with store.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def age(store: TaskStore, task_id: int, **columns: Any) -> None:
    assert isinstance(store, SqlTaskStore)
    async with store.engine.begin() as conn:
        await conn.execute(update(tasks).where(tasks.c.id == task_id).values(**columns))


async def make_stale(store: TaskStore, task: Task) -> None:
    """Published long ago and waiting: no outbox row, due and untouched for an hour."""
    entries = await store.claim_outbox(1000, 30)
    await store.delete_outbox([entry.id for entry in entries])
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await age(store, task.id, run_at=hour_ago, updated_at=hour_ago)


Call = Callable[[TaskStore, Task, RunRef | None], Awaitable[Any]]


def _run_of(task: Task, run: RunRef | None) -> RunRef:
    """The task's run, or for a task that does not run one that cannot be its run."""
    return run or RunRef(task.id, task.run_token + 1, task.attempts, "worker-a")


async def _rescue(store: TaskStore, task: Task, run: RunRef | None) -> Any:
    await age(store, task.id, lease_expires_at=datetime.now(UTC) - timedelta(minutes=1))
    return await store.rescue_expired(100)


async def _expire(store: TaskStore, task: Task, run: RunRef | None) -> Any:
    await age(store, task.id, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    return await store.expire_overdue(100)


async def _redispatch(store: TaskStore, task: Task, run: RunRef | None) -> Any:
    await make_stale(store, task)
    return await store.redispatch_stale(60, 100)


async def _held(store: TaskStore, task: Task) -> None:
    """Held by its queue's gates (a cap with room), whatever its state."""
    await store.set_gates(task.queue, {"max_running": 5})
    await age(store, task.id, held="max_running")


async def _claim_held(store: TaskStore, task: Task, run: RunRef | None) -> Any:
    await _held(store, task)
    return await store.claim_held(task.queue, 1, "worker-b", 60, HANDLERS)


async def _wake(store: TaskStore, task: Task, run: RunRef | None) -> Any:
    await _held(store, task)
    return await store.wake(task.queue)


CALLS: dict[str, Call] = {
    "claim_many": lambda s, t, r: s.claim_many([t.id], "worker-b", 60, HANDLERS),
    "complete_many": lambda s, t, r: s.complete_many([(_run_of(t, r), "ok")]),
    "complete_and_claim_held": lambda s, t, r: s.complete_and_claim_held(
        _run_of(t, r), "ok", t.queue, 1, "worker-b", 60, HANDLERS
    ),
    "fail": lambda s, t, r: s.fail(_run_of(t, r), "boom", None),
    "retry_later": lambda s, t, r: s.retry_later(_run_of(t, r), "again", None, 0),
    "release": lambda s, t, r: s.release(_run_of(t, r)),
    "snooze": lambda s, t, r: s.snooze(_run_of(t, r), 0),
    "expire_overdue": _expire,
    "mark_cancelled": lambda s, t, r: s.mark_cancelled(_run_of(t, r)),
    "rescue_expired": _rescue,
    "cancel": lambda s, t, r: s.cancel(t.id),
    "retry": lambda s, t, r: s.retry(t.id),
    "fail_unrunnable": lambda s, t, r: s.fail_unrunnable(t.id, "no handler"),
    "dispatch_later": lambda s, t, r: s.dispatch_later([t.id], 0),
    "redispatch_stale": _redispatch,
    "claim_held": _claim_held,
    "wake": _wake,
}

CASES = [
    (transition, method, status)
    for transition, methods in TRANSITIONS.items()
    for method in methods
    for status in TaskStatus
]


@pytest.mark.parametrize(
    ("transition", "method", "status"),
    CASES,
    ids=[f"{method}-from-{status}" for _, method, status in CASES],
)
async def test_a_transition_changes_exactly_what_the_table_allows(
    any_store: TaskStore, transition: Transition, method: str, status: TaskStatus
) -> None:
    task, run = await make_task(any_store, status)
    if method == "redispatch_stale":
        await make_stale(any_store, task)
    before, rows_before = await current(any_store, task.id), await outbox_rows(any_store, task.id)
    with contextlib.suppress(InvalidTransition, TaskNotFound):  # refused: see below
        await CALLS[method](any_store, before, run)
    after, rows_after = await current(any_store, task.id), await outbox_rows(any_store, task.id)
    starts, ends = ALLOWED[transition]
    changed = (
        after.status is not before.status
        or after.cancel_requested is not before.cancel_requested
        or after.run_token != before.run_token
        or rows_after > rows_before
    )
    assert changed is (status in starts), (
        f"{method} from {status}: {'changed' if changed else 'left'} the task, but "
        f"ALLOWED[{transition}] starts from {sorted(starts)}: {before} -> {after}"
    )
    if changed:
        assert after.status in ends, f"{method} from {status} ended {after.status}, not {ends}"
