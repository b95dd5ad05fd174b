"""Retention: the cleaner's statements delete finished tasks past their age, with all
they own, and never a task that is not final; the rules follow the settings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from krolik.errors import StoreConflict
from krolik.events import Observer
from krolik.retention import Cleaner, retention_rules
from krolik.settings import RetentionSettings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import PruneRule
from krolik.store.sql.store import SqlTaskStore
from krolik.store.sqlite import SqliteTaskStore
from krolik.store.tables import attempts, deliveries, outbox, tasks
from tests.contract.store.support import add, backdate, current, take

DAY = 86400.0
DONE_WEEK = PruneRule(TaskStatus.DONE, 7 * DAY)


async def finished(store: TaskStore, status: TaskStatus, *, days: float, **fields: object) -> int:
    """A task that ended ``status`` ``days`` ago (with an attempt, and a delivery row
    when it names a webhook)."""
    task = await add(store, **fields)
    if status is TaskStatus.CANCELLED:
        await store.cancel(task.id)
    else:
        _, run = await take(store, task)
        if status is TaskStatus.DONE:
            assert await store.complete(run, "ok")
        elif status is TaskStatus.FAILED:
            assert await store.fail(run, "boom", None)
    await backdate(store, task.id, finished_at=timedelta(days=days))
    return task.id


async def rows(store: TaskStore, table: object, task_id: int) -> int:
    assert isinstance(store, SqlTaskStore)
    stmt = select(func.count()).select_from(table).where(table.c.task_id == task_id)  # type: ignore[attr-defined]
    async with store.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def exists(store: TaskStore, task_id: int) -> bool:
    return await store.get(task_id) is not None


async def test_old_done_tasks_go_with_their_attempts_and_deliveries(any_store: TaskStore) -> None:
    old = await finished(
        any_store, TaskStatus.DONE, days=8, webhook_url="https://hooks.example.com/x"
    )
    assert await rows(any_store, attempts, old) == 1
    assert await rows(any_store, deliveries, old) == 1
    young = await finished(any_store, TaskStatus.DONE, days=6)
    assert await any_store.count_prunable(DONE_WEEK) == {"default": 1}
    assert await any_store.prune(DONE_WEEK, 100) == 1
    assert not await exists(any_store, old)
    assert await rows(any_store, attempts, old) == 0
    assert await rows(any_store, deliveries, old) == 0
    assert await exists(any_store, young)
    assert await any_store.prune(DONE_WEEK, 100) == 0


async def test_a_task_that_is_not_final_is_never_deleted(any_store: TaskStore) -> None:
    pending = await add(any_store)
    running, _ = await take(any_store, await add(any_store))
    # Even with a finish time long past (a task retried after it ended keeps none, but a
    # statement must not rely on that), only the status decides.
    for task_id in (pending.id, running.id):
        await backdate(any_store, task_id, finished_at=timedelta(days=400))
    for status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
        with pytest.raises(ValueError, match="only finished tasks"):
            await any_store.prune(PruneRule(status, 1), 100)
    for status in TaskStatus:
        if status.is_final:
            await any_store.prune(PruneRule(status, 1), 100)
    assert (await current(any_store, pending.id)).status is TaskStatus.PENDING
    assert (await current(any_store, running.id)).status is TaskStatus.PROCESSING
    assert await rows(any_store, outbox, pending.id) == 1


async def test_each_status_and_queue_has_its_own_retention(any_store: TaskStore) -> None:
    settings = RetentionSettings(
        done_seconds=7 * DAY,
        failed_seconds="forever",  # type: ignore[arg-type]
        queues={"emails": {"done": 3600, "cancelled": None}},
    )
    made = {
        "done-default-2h": await finished(any_store, TaskStatus.DONE, days=2 / 24),
        "done-default-8d": await finished(any_store, TaskStatus.DONE, days=8),
        "done-emails-2h": await finished(any_store, TaskStatus.DONE, days=2 / 24, queue="emails"),
        "failed-default-400d": await finished(any_store, TaskStatus.FAILED, days=400),
        "cancelled-default-31d": await finished(any_store, TaskStatus.CANCELLED, days=31),
        "cancelled-emails-400d": await finished(
            any_store, TaskStatus.CANCELLED, days=400, queue="emails"
        ),
    }
    cleaner = Cleaner(any_store, settings.model_copy(update={"busy_share": 1}), Observer())
    while await cleaner.tick():
        pass
    left = {label for label, task_id in made.items() if await exists(any_store, task_id)}
    assert left == {"done-default-2h", "failed-default-400d", "cancelled-emails-400d"}
    assert cleaner.pruned == 3


async def test_batches_are_bounded_and_the_cleaner_goes_on_while_they_are_full(
    any_store: TaskStore,
) -> None:
    ids = [await finished(any_store, TaskStatus.DONE, days=10) for _ in range(5)]
    assert await any_store.prune(DONE_WEEK, 2) == 2
    seen: list[int] = []

    class Counting(Observer):
        def tasks_pruned(self, status: TaskStatus, count: int, seconds: float) -> None:
            seen.append(count)

    cleaner = Cleaner(any_store, RetentionSettings(batch_size=2, busy_share=1), Counting())
    assert await cleaner.tick() is True
    assert await cleaner.tick() is False
    assert seen == [2, 1]
    assert cleaner.interval == RetentionSettings().interval_seconds
    assert [await exists(any_store, task_id) for task_id in ids] == [False] * 5


async def test_a_cleaner_with_a_backlog_pauses_in_proportion_to_its_work(
    any_store: TaskStore,
) -> None:
    for _ in range(3):
        await finished(any_store, TaskStatus.DONE, days=10)
    cleaner = Cleaner(any_store, RetentionSettings(batch_size=2, busy_share=0.25), Observer())
    cleaner.batch = 2  # as configured; not grown or shrunk by the timing of this machine
    assert await cleaner.tick() is False  # not at once: after a pause
    assert 0 < cleaner.interval < 5  # three times the batches' time, not the 60 s interval
    assert await cleaner.tick() is False
    assert cleaner.interval == 60
    assert cleaner.pruned == 3


def test_rules_of_the_settings() -> None:
    rules = retention_rules(
        RetentionSettings(
            done_seconds=60,
            expired_seconds=None,
            queues={"a": {"done": 5, "failed": None}, "b": {"done": None}},
        )
    )
    by_status: dict[TaskStatus, list[PruneRule]] = {}
    for rule in rules:
        by_status.setdefault(rule.status, []).append(rule)
    assert by_status[TaskStatus.DONE] == [
        PruneRule(TaskStatus.DONE, 60, except_queues=("a", "b")),
        PruneRule(TaskStatus.DONE, 5, queues=("a",)),
    ]
    assert by_status[TaskStatus.FAILED] == [
        PruneRule(TaskStatus.FAILED, 30 * DAY, except_queues=("a",))
    ]
    assert TaskStatus.EXPIRED not in by_status
    with pytest.raises(ValueError, match="statuses kept"):
        RetentionSettings(queues={"a": {"pending": 5}})


def test_krolik_prune_shows_then_deletes(tmp_path: Path) -> None:
    path = tmp_path / "krolik.sqlite3"

    async def make() -> tuple[list[int], int]:
        store = SqliteTaskStore(path)
        await store.open()
        old = [await finished(store, TaskStatus.DONE, days=9) for _ in range(3)]
        kept = await finished(store, TaskStatus.FAILED, days=9)
        await store.close()
        return old, kept

    async def left() -> list[int]:
        store = SqliteTaskStore(path)
        async with store.engine.connect() as conn:
            ids = (await conn.execute(select(tasks.c.id).order_by(tasks.c.id))).scalars().all()
        await store.close()
        return list(ids)

    def krolik_prune(*args: str) -> str:
        env = {"PATH": os.environ["PATH"], "APP__RETENTION__FAILED_SECONDS": "forever"}
        command = [sys.executable, "-m", "krolik.cli", "prune", "--data", str(path), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    old, kept = asyncio.run(make())
    shown = krolik_prune("--dry-run")
    assert "done       default                  7d        3" in shown
    assert "3 finished tasks would be deleted" in shown
    assert asyncio.run(left()) == [*old, kept]
    deleted = krolik_prune()
    assert "done       *                        7d        3" in deleted
    assert "3 finished tasks deleted" in deleted
    assert asyncio.run(left()) == [kept]


async def test_what_the_cleaner_deletes_is_counted_in_the_metrics(any_store: TaskStore) -> None:
    from krolik.metrics import Metrics
    from krolik.node import Node, Role
    from tests.conftest import test_settings

    for _ in range(3):
        await finished(any_store, TaskStatus.FAILED, days=31)
    metrics = Metrics()
    node = Node.build(
        test_settings("unused", "retention"), {Role.WORKER}, store=any_store, metrics=metrics
    )
    assert node.cleaner is not None  # every worker node has one (APP__RETENTION__ENABLED)
    await node.cleaner.tick()
    registry = metrics.registry
    assert registry.get_sample_value("krolik_tasks_pruned_total", {"status": "failed"}) == 3
    assert registry.get_sample_value("krolik_prune_batch_duration_seconds_count") == 1
    await node.broker.close()
    off = test_settings("unused", "retention", retention={"enabled": False})
    assert Node.build(off, {Role.WORKER}, store=any_store, broker=node.broker).cleaner is None


class SlowStore:
    """A store whose deletes take ``seconds`` (a loaded database)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    async def prune(
        self, rule: PruneRule, limit: int, *, seconds_limit: float | None = None
    ) -> int:
        self.sizes.append(limit)
        await asyncio.sleep(self.seconds)
        if seconds_limit is not None and self.seconds > seconds_limit:
            raise StoreConflict("canceling statement due to statement timeout")
        return limit


def done_only_cleaner(store: SlowStore, **settings: float) -> Cleaner:
    """A cleaner of done tasks only (one rule, so one batch a tick), batches of 400."""
    rules = RetentionSettings(batch_size=400, busy_share=1, done_seconds=1, **settings)
    return Cleaner(
        store,  # type: ignore[arg-type]
        rules.model_copy(
            update={"failed_seconds": None, "cancelled_seconds": None, "expired_seconds": None}
        ),
    )


async def test_a_slow_batch_halves_the_next_and_a_quick_one_doubles_it() -> None:
    slow = SlowStore(0.08)
    cleaner = done_only_cleaner(slow)
    for _ in range(3):
        await cleaner.tick()
    assert slow.sizes == [400, 200, 100]
    slow.seconds = 0.0
    for _ in range(3):
        await cleaner.tick()
    assert slow.sizes[3:] == [50, 100, 200]


async def test_a_batch_past_its_time_limit_is_cancelled_and_deletes_nothing(
    store: PostgresTaskStore,
) -> None:
    old = await finished(store, TaskStatus.DONE, days=8)
    # Another transaction holds the task's attempt row: the cascade has to wait for it,
    # and the batch would hold its own locks all that time.
    async with store.engine.connect() as other:
        await other.execute(
            select(attempts.c.id).where(attempts.c.task_id == old).with_for_update()
        )
        with pytest.raises(StoreConflict):
            await store.prune(DONE_WEEK, 100, seconds_limit=0.05)
        await other.rollback()
    assert await exists(store, old)
    assert await store.prune(DONE_WEEK, 100, seconds_limit=0.05) == 1


async def test_the_cleaner_halves_its_batch_after_a_cancelled_one() -> None:
    slow = SlowStore(0.03)
    cleaner = done_only_cleaner(slow, batch_seconds_limit=0.02)
    assert await cleaner.tick()  # cancelled: nothing deleted, but more is left
    assert cleaner.pruned == 0
    slow.seconds = 0.0
    await cleaner.tick()
    assert slow.sizes == [400, 200]
    assert cleaner.pruned == 200
