"""Schedules in the store: their rows, and ticks made into tasks exactly once, however many
schedulers run at once and whatever their plans say."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from krolik.errors import InvalidTransition
from krolik.registry import Registry
from krolik.schedules.scheduler import Scheduler, code_schedules
from krolik.schedules.spec import ScheduledTask, new_schedule
from krolik.schedules.timing import CatchUp, Timing
from krolik.settings import SchedulerSettings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import DuePlan, NewTask, Schedule
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import schedule_ticks, tasks
from tests.contract.store.support import backdate, drain_outbox

NOW = datetime.now(UTC)


def every(seconds: float, name: str = "tick", **fields: object) -> object:
    return new_schedule(
        name,
        source="api",
        timing=Timing(every_seconds=seconds),
        task=ScheduledTask(name="echo", payload={"from": name}),
        catch_up=CatchUp.ALL,
        now=datetime.now(UTC),
        **fields,  # type: ignore[arg-type]
    )


def due_now(store: TaskStore, name: str, seconds_ago: float) -> object:
    return store.change_schedule(
        name, {"next_run_at": datetime.now(UTC) - timedelta(seconds=seconds_ago)}
    )


def fixed(ticks: list[datetime], next_run_at: datetime) -> object:
    def plan(schedule: Schedule, now: datetime) -> DuePlan:
        task = NewTask(name="echo", queue="default", payload=schedule.task.get("payload"))
        return DuePlan(list(ticks), next_run_at, task)

    return plan


async def count_tasks(store: TaskStore) -> int:
    assert isinstance(store, SqlTaskStore)
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(tasks))).scalar_one())


async def test_a_schedule_is_written_read_changed_and_deleted(any_store: TaskStore) -> None:
    created = await any_store.create_schedule(every(60))  # type: ignore[arg-type]
    assert created.name == "tick"
    assert created.source == "api"
    assert created.task == {"payload": {"from": "tick"}, "name": "echo"}
    assert created.next_run_at > datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(InvalidTransition, match="exists"):
        await any_store.create_schedule(every(30))  # type: ignore[arg-type]
    assert [s.name for s in await any_store.list_schedules()] == ["tick"]
    paused = await any_store.change_schedule("tick", {"paused": True})
    assert paused is not None
    assert paused.paused
    assert await any_store.get_schedule("tick") == paused
    assert await any_store.change_schedule("nope", {"paused": True}) is None
    with pytest.raises(ValueError, match="changeable"):
        await any_store.change_schedule("tick", {"source": "code"})
    assert await any_store.delete_schedule("tick")
    assert not await any_store.delete_schedule("tick")
    assert await any_store.get_schedule("tick") is None


async def test_due_ticks_make_one_task_each_with_its_outbox_row(any_store: TaskStore) -> None:
    await any_store.create_schedule(every(60))  # type: ignore[arg-type]
    ticks = [NOW - timedelta(minutes=2), NOW - timedelta(minutes=1)]
    await due_now(any_store, "tick", 120)
    [run] = await any_store.run_due_schedules(fixed(ticks, NOW + timedelta(hours=1)), 10)  # type: ignore[arg-type]
    assert [tick for tick, _ in run.made] == ticks
    assert run.taken == 0
    made = [task for _, task in run.made]
    assert all(task.status is TaskStatus.PENDING for task in made)
    assert sorted(entry.task_id for entry in await drain_outbox(any_store)) == [t.id for t in made]
    schedule = await any_store.get_schedule("tick")
    assert schedule is not None
    assert schedule.next_run_at == NOW + timedelta(hours=1)
    assert (schedule.last_run_at, schedule.last_task_id) == (ticks[-1], made[-1].id)
    listed = await any_store.schedule_ticks("tick")
    assert [(t.tick_at, t.task_id) for t in listed] == [
        (ticks[1], made[1].id),
        (ticks[0], made[0].id),
    ]
    assert await any_store.schedule_ticks("tick", before=ticks[1]) == listed[1:]
    # Not due any more: nothing runs, whatever a plan would say.
    assert await any_store.run_due_schedules(fixed(ticks, NOW), 10) == []  # type: ignore[arg-type]


async def test_a_tick_is_made_once_even_when_a_plan_asks_again(any_store: TaskStore) -> None:
    await any_store.create_schedule(every(60))  # type: ignore[arg-type]
    tick = NOW - timedelta(seconds=30)
    await due_now(any_store, "tick", 30)
    [first] = await any_store.run_due_schedules(fixed([tick], NOW - timedelta(seconds=1)), 10)  # type: ignore[arg-type]
    # Still due (the plan moved it to the past): a second run is asked for the same tick.
    [again] = await any_store.run_due_schedules(fixed([tick, tick], NOW), 10)  # type: ignore[arg-type]
    assert (len(first.made), first.taken) == (1, 0)
    assert (again.made, again.taken) == ([], 1)
    assert await count_tasks(any_store) == 1


async def test_paused_schedules_do_not_tick(any_store: TaskStore) -> None:
    await any_store.create_schedule(every(60, paused=True))  # type: ignore[arg-type]
    await due_now(any_store, "tick", 300)
    assert await any_store.run_due_schedules(fixed([NOW], NOW), 10) == []  # type: ignore[arg-type]


async def test_many_schedulers_at_once_make_each_tick_once(any_store: TaskStore) -> None:
    """Twelve schedulers race over ten schedules, each asking for the same twenty ticks
    (plans that leave the schedules due, so every round races again)."""
    for n in range(10):
        await any_store.create_schedule(every(60, name=f"s{n}"))  # type: ignore[arg-type]
    ticks = [NOW - timedelta(seconds=s) for s in range(20, 0, -1)]
    for _ in range(3):
        for n in range(10):
            await due_now(any_store, f"s{n}", 30)
        # Each run leaves its schedules due, but behind the others (a second ago, not
        # thirty), so the rounds go round all ten where schedulers take turns (SQLite).
        still_due = datetime.now(UTC) - timedelta(seconds=1)
        await asyncio.gather(
            *(any_store.run_due_schedules(fixed(ticks, still_due), 3) for _ in range(12))  # type: ignore[arg-type]
        )
    assert await count_tasks(any_store) == 10 * 20
    assert isinstance(any_store, SqlTaskStore)
    async with any_store.engine.connect() as conn:
        linked = (
            select(func.count())
            .select_from(schedule_ticks)
            .where(schedule_ticks.c.task_id.is_not(None))
        )
        assert (await conn.execute(linked)).scalar_one() == 200


async def test_code_schedules_are_declared_once_and_keep_their_pause(any_store: TaskStore) -> None:
    registry = Registry()

    @registry.task(name="report", cron="0 6 * * *", tz="Europe/Berlin", payload={"r": 1})
    async def report(payload: object) -> None: ...

    assert await any_store.declare_schedules(code_schedules(registry, NOW)) == []
    [declared] = await any_store.list_schedules()
    assert (declared.source, declared.cron, declared.tz) == ("code", "0 6 * * *", "Europe/Berlin")
    assert declared.task == {"payload": {"r": 1}, "name": "report"}
    await any_store.change_schedule("report", {"paused": True})
    # Another worker starts with the same code: nothing changes.
    assert await any_store.declare_schedules(code_schedules(registry, NOW)) == []
    again = await any_store.get_schedule("report")
    assert again is not None
    assert again.paused
    assert again.next_run_at == declared.next_run_at
    # New code: the new timetable, still paused.
    newer = Registry()

    @newer.task(name="report", cron="0 7 * * *", tz="Europe/Berlin", payload={"r": 1})
    async def report_later(payload: object) -> None: ...

    await any_store.declare_schedules(code_schedules(newer, NOW))
    changed = await any_store.get_schedule("report")
    assert changed is not None
    assert (changed.cron, changed.paused) == ("0 7 * * *", True)
    # A schedule of the API of that name is not taken over.
    await any_store.create_schedule(every(60, name="nightly"))  # type: ignore[arg-type]
    clash = Registry()

    @clash.task(name="nightly", every=5)
    async def nightly(payload: object) -> None: ...

    assert await any_store.declare_schedules(code_schedules(clash, NOW)) == ["nightly"]
    kept = await any_store.get_schedule("nightly")
    assert kept is not None
    assert (kept.source, kept.every_seconds) == ("api", 60)


async def test_the_scheduler_runs_due_schedules_by_their_policy(any_store: TaskStore) -> None:
    await any_store.create_schedule(every(60))  # type: ignore[arg-type]
    await due_now(any_store, "tick", 185)  # 4 ticks due: 3 minutes missed and one now
    scheduler = Scheduler(any_store, SchedulerSettings(), default_queue="default")
    await scheduler.tick()
    assert scheduler.made in (3, 4)  # ALL: every due tick (3 or 4, by where the minute falls)
    schedule = await any_store.get_schedule("tick")
    assert schedule is not None
    assert schedule.next_run_at > datetime.now(UTC)
    assert schedule.next_run_at.timestamp() % 60 == 0
    made = [tick.task_id for tick in await any_store.schedule_ticks("tick")]
    tasks_made = await any_store.get_many([i for i in made if i is not None])
    assert {task.created_by for task in tasks_made} == {"schedule:tick"}
    assert {task.name for task in tasks_made} == {"echo"}


async def test_retention_takes_a_ticks_record_with_its_task(any_store: TaskStore) -> None:
    from krolik.store.records import PruneRule

    await any_store.create_schedule(every(60))  # type: ignore[arg-type]
    await due_now(any_store, "tick", 30)
    [run] = await any_store.run_due_schedules(fixed([NOW], NOW + timedelta(hours=1)), 10)  # type: ignore[arg-type]
    [(_, task)] = run.made
    await any_store.cancel(task.id)
    await backdate(any_store, task.id, finished_at=timedelta(days=40))
    assert await any_store.prune(PruneRule(TaskStatus.CANCELLED, 86400), 10) == 1
    assert await any_store.schedule_ticks("tick") == []
    assert await any_store.get_schedule("tick") is not None


async def test_the_next_tick_is_counted_by_the_databases_clock(any_store: TaskStore) -> None:
    assert await any_store.next_tick_in() is None
    await any_store.create_schedule(every(3600, name="hourly"))  # type: ignore[arg-type]
    await any_store.create_schedule(every(60, name="paused", paused=True))  # type: ignore[arg-type]
    await any_store.change_schedule("paused", {"next_run_at": NOW - timedelta(hours=1)})
    due_in = await any_store.next_tick_in()
    assert due_in is not None
    assert 0 < due_in <= 3600  # the paused one, though overdue, does not count
    await due_now(any_store, "hourly", 10)
    assert await any_store.next_tick_in() == 0
