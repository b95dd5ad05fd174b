"""Schedules: their rows, and the one transaction that turns due ticks into tasks.

``run_due_schedules`` locks due schedules (SKIP LOCKED: each scheduler takes others),
asks its caller which ticks to run, inserts those ticks under their unique key (schedule,
tick time; ON CONFLICT DO NOTHING), inserts a task and its outbox row for each tick that
went in, and moves the schedule on, all in one transaction. A scheduler killed at any
point leaves either all of it or none; two that race for one tick (a stale read, a
schedule moved back by an edit) make one task between them, the key decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from krolik.errors import InvalidTransition
from krolik.store.records import (
    DuePlan,
    NewSchedule,
    Schedule,
    ScheduledRun,
    ScheduleTick,
)
from krolik.store.sql.rows import aware
from krolik.store.sql.tasks import TaskStatements
from krolik.store.tables import schedule_ticks, schedules

DEFINITION = ("cron", "every_seconds", "tz", "task", "catch_up")
"""What makes a schedule what it is (changing any of it moves its next run)."""
CHANGEABLE = frozenset({*DEFINITION, "paused", "next_run_at"})


def row_to_schedule(row: Mapping[Any, Any]) -> Schedule:
    return Schedule(
        name=row["name"],
        source=row["source"],
        cron=row["cron"],
        every_seconds=row["every_seconds"],
        tz=row["tz"],
        task=dict(row["task"]),
        catch_up=row["catch_up"],
        paused=bool(row["paused"]),
        next_run_at=aware(row["next_run_at"]),
        last_run_at=aware(row["last_run_at"]),
        last_task_id=row["last_task_id"],
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
    )


def _values(new: NewSchedule) -> dict[str, Any]:
    return {
        "name": new.name,
        "source": new.source,
        "cron": new.cron,
        "every_seconds": new.every_seconds,
        "tz": new.tz,
        "task": new.task,
        "catch_up": new.catch_up,
        "paused": new.paused,
        "next_run_at": new.next_run_at,
    }


class ScheduleStatements(TaskStatements):
    async def create_schedule(self, new: NewSchedule) -> Schedule:
        clock = self.dialect.clock()
        stmt = self._on_name_conflict_do_nothing(
            self.dialect.insert(schedules).values(
                **_values(new), created_at=clock, updated_at=clock
            )
        ).returning(*schedules.c)
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise InvalidTransition(f"a schedule named {new.name!r} exists")
        return row_to_schedule(row)

    @staticmethod
    def _on_name_conflict_do_nothing(stmt: Any) -> Any:
        return stmt.on_conflict_do_nothing(index_elements=[schedules.c.name])

    async def declare_schedules(self, declared: Sequence[NewSchedule]) -> list[str]:
        """Write the schedules of code: new ones go in, changed ones take their new
        definition (and next run), the same ones stay as they are (paused included)."""
        refused: list[str] = []
        async with self._tx() as conn:
            for new in declared:
                row = (
                    (
                        await conn.execute(
                            select(schedules).where(schedules.c.name == new.name).with_for_update()
                        )
                    )
                    .mappings()
                    .first()
                )
                clock = self.dialect.clock()
                if row is None:
                    await conn.execute(
                        self._on_name_conflict_do_nothing(
                            self.dialect.insert(schedules).values(
                                **_values(new), created_at=clock, updated_at=clock
                            )
                        )
                    )
                elif row["source"] != new.source:
                    refused.append(new.name)
                elif any(row[column] != getattr(new, column) for column in DEFINITION):
                    await conn.execute(
                        update(schedules)
                        .where(schedules.c.name == new.name)
                        .values(
                            **{column: getattr(new, column) for column in DEFINITION},
                            next_run_at=new.next_run_at,
                            updated_at=clock,
                        )
                    )
        return refused

    async def get_schedule(self, name: str) -> Schedule | None:
        async with self._tx() as conn:
            row = (
                (await conn.execute(select(schedules).where(schedules.c.name == name)))
                .mappings()
                .first()
            )
        return row_to_schedule(row) if row else None

    async def list_schedules(self) -> list[Schedule]:
        async with self._tx() as conn:
            rows = (await conn.execute(select(schedules).order_by(schedules.c.name))).mappings()
            return [row_to_schedule(row) for row in rows.all()]

    async def change_schedule(self, name: str, changes: Mapping[str, Any]) -> Schedule | None:
        unknown = set(changes) - CHANGEABLE
        if unknown:
            raise ValueError(f"not a schedule's changeable field: {sorted(unknown)}")
        stmt = (
            update(schedules)
            .where(schedules.c.name == name)
            .values(**changes, updated_at=self.dialect.clock())
            .returning(*schedules.c)
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return row_to_schedule(row) if row else None

    async def delete_schedule(self, name: str) -> bool:
        async with self._tx() as conn:
            deleted = await conn.execute(
                delete(schedules).where(schedules.c.name == name).returning(schedules.c.name)
            )
            return deleted.first() is not None

    async def schedule_ticks(
        self, name: str, *, before: datetime | None = None, limit: int = 50
    ) -> list[ScheduleTick]:
        stmt = (
            select(schedule_ticks)
            .where(schedule_ticks.c.schedule == name)
            .order_by(schedule_ticks.c.tick_at.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(schedule_ticks.c.tick_at < before)
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            ScheduleTick(
                schedule=row["schedule"],
                tick_at=aware(row["tick_at"]),
                task_id=row["task_id"],
                created_at=aware(row["created_at"]),
            )
            for row in rows
        ]

    async def next_tick_in(self) -> float | None:
        stmt = select(func.min(schedules.c.next_run_at), self.dialect.now()).where(
            ~schedules.c.paused
        )
        async with self._tx() as conn:
            earliest, now = (await conn.execute(stmt)).one()
        if earliest is None:
            return None
        seconds: float = (aware(earliest) - aware(now)).total_seconds()
        return max(0.0, seconds)

    async def run_due_schedules(
        self, plan: Callable[[Schedule, datetime], DuePlan], limit: int
    ) -> list[ScheduledRun]:
        due = (
            select(schedules)
            .where(~schedules.c.paused, schedules.c.next_run_at <= self.dialect.now())
            .order_by(schedules.c.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        runs: list[ScheduledRun] = []
        async with self._tx() as conn:
            now = aware((await conn.execute(select(self.dialect.now()))).scalar_one())
            for row in (await conn.execute(due)).mappings().all():
                schedule = row_to_schedule(row)
                runs.append(await self._run_one(conn, schedule, plan(schedule, now)))
        return runs

    async def _run_one(
        self, conn: AsyncConnection, schedule: Schedule, plan: DuePlan
    ) -> ScheduledRun:
        made: list[tuple[datetime, Any]] = []
        ticks = sorted(set(plan.ticks)) if plan.task is not None else []
        if ticks:
            clock = self.dialect.clock()
            inserted = await conn.execute(
                self.dialect.insert(schedule_ticks)
                .values(created_at=clock)
                .on_conflict_do_nothing(
                    index_elements=[schedule_ticks.c.schedule, schedule_ticks.c.tick_at]
                )
                .returning(schedule_ticks.c.tick_at),
                [{"schedule": schedule.name, "tick_at": tick} for tick in ticks],
            )
            fresh = sorted(aware(stamp) for stamp in inserted.scalars().all())
            if fresh:
                assert plan.task is not None
                enqueued = await self._insert_plain(conn, [plan.task] * len(fresh), None)
                made = [(tick, item.task) for tick, item in zip(fresh, enqueued, strict=True)]
                await conn.execute(
                    update(schedule_ticks)
                    .where(
                        schedule_ticks.c.schedule == schedule.name,
                        schedule_ticks.c.tick_at == bindparam("p_tick"),
                    )
                    .values(task_id=bindparam("p_task")),
                    [{"p_tick": tick, "p_task": task.id} for tick, task in made],
                )
        moved: dict[str, Any] = {"next_run_at": plan.next_run_at}
        if made:
            moved |= {"last_run_at": made[-1][0], "last_task_id": made[-1][1].id}
        await conn.execute(
            update(schedules)
            .where(schedules.c.name == schedule.name)
            .values(**moved, updated_at=self.dialect.clock())
        )
        return ScheduledRun(
            schedule=schedule.name,
            made=made,
            taken=len(ticks) - len(made),
            next_run_at=plan.next_run_at,
        )
