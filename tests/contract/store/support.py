"""What the store contract tests share: making tasks in a state, reading them back.

Nothing here knows which store it has, except ``backdate``, which moves a timestamp
into the past (both stores are SQL stores) so "old" and "expired" need no waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import update

from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, OutboxEntry, RunRef, Task
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import tasks

T = TypeVar("T")

DEFAULT_MAX_ATTEMPTS = 3
NAMES = ("echo", "report", "alpha", "beta", "job0", "job1", "job2")
"""Every handler name the tests' tasks use."""


def handlers(default_max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> dict[str, int]:
    """A worker's handlers, for claims: each name the tests use, with its default."""
    return dict.fromkeys(NAMES, default_max_attempts)


HANDLERS = handlers()
LEASE = 30.0
CLAIM = 30.0
WORKER = "worker-a"
OTHER_WORKER = "worker-b"


async def add(store: TaskStore, **fields: Any) -> Task:
    values: dict[str, Any] = {"name": "echo", "queue": "default", "payload": {"n": 1}}
    [enqueued] = await store.enqueue([NewTask(**(values | fields))])
    assert enqueued.created
    return enqueued.task


async def take(
    store: TaskStore,
    task: Task,
    worker: str = WORKER,
    lease: float = LEASE,
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> tuple[Task, RunRef]:
    claimed = await store.claim(task.id, worker, lease, handlers(default_max_attempts))
    assert claimed is not None, f"task {task.id} was not claimable"
    return claimed, RunRef.of(claimed)


async def current(store: TaskStore, task_id: int) -> Task:
    task = await store.get(task_id)
    assert task is not None
    return task


async def drain_outbox(store: TaskStore) -> list[OutboxEntry]:
    """Take and forget every due outbox row, as a relay does after publishing."""
    entries = await store.claim_outbox(10_000, CLAIM)
    await store.delete_outbox([entry.id for entry in entries])
    return entries


async def due_outbox(store: TaskStore) -> list[int]:
    """Task ids of the due outbox rows, left in place (claimed, then given back)."""
    entries = await store.claim_outbox(10_000, CLAIM)
    await store.release_outbox([entry.id for entry in entries])
    return sorted(entry.task_id for entry in entries)


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(0.01)


async def backdate(store: TaskStore, task_id: int, **columns: timedelta) -> None:
    """Set timestamp columns of a task to that long ago (``started_at=timedelta(...)``)."""
    assert isinstance(store, SqlTaskStore)
    past = datetime.now(UTC)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values({name: past - ago for name, ago in columns.items()})
        )


def is_utc(stamp: datetime | None) -> bool:
    return stamp is not None and stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)


def near(stamp: datetime, expected: datetime, tolerance: float = 2.0) -> bool:
    return abs((stamp - expected).total_seconds()) < tolerance


# The five ways a run ends, as the worker writes them.
FINISHERS: dict[str, Callable[[TaskStore, RunRef], Awaitable[bool | TaskStatus | None]]] = {
    "complete": lambda store, run: store.complete(run, {"ok": True}),
    "fail": lambda store, run: store.fail(run, "ValueError: boom", "Traceback ..."),
    "retry_later": lambda store, run: store.retry_later(run, "ValueError: boom", None, 60),
    "mark_cancelled": lambda store, run: store.mark_cancelled(run),
    "release": lambda store, run: store.release(run),
}
AFTER: dict[str, tuple[TaskStatus, int]] = {
    # transition -> (status, attempts) afterwards, for a first run
    "complete": (TaskStatus.DONE, 1),
    "fail": (TaskStatus.FAILED, 1),
    "retry_later": (TaskStatus.PENDING, 1),
    "mark_cancelled": (TaskStatus.CANCELLED, 1),
    "release": (TaskStatus.PENDING, 0),
}
BACK_TO_PENDING = {"retry_later", "release"}
"""These answer where the task went (None: not this run's any more), the others a bool."""
