"""Schedules: create, list, read, change, pause and resume, delete, and the tasks they made.

Schedules declared in code (``@task(cron=...)``) are listed with the others; their
timetable belongs to the code (a change here would be undone by the next worker that
starts), so only pausing, resuming and deleting them is allowed here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from krolik.api.auth import AdminAccess, ReadAccess
from krolik.api.deps import SettingsDep, StoreDep, submitter_of
from krolik.api.errors import GUARDED_RESPONSES
from krolik.api.schemas import Problem, TaskOut, ValidationProblem
from krolik.errors import InvalidTransition, ScheduleNotFound, SubmissionRefused
from krolik.schedules.control import set_paused
from krolik.schedules.spec import (
    SCHEDULE_NAME_PATTERN,
    ScheduledTask,
    ScheduleName,
    new_schedule,
    timing_of,
)
from krolik.schedules.timing import CatchUp, InvalidSchedule, Timing
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.records import Schedule

router = APIRouter(prefix="/schedules", tags=["schedules"], responses=GUARDED_RESPONSES)

NEXT_RUNS = 5
NameParam = Annotated[str, Path(pattern=SCHEDULE_NAME_PATTERN, description="The schedule's name.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not readable JSON"},
    413: {"model": Problem, "description": "The body is larger than APP__API__MAX_PAYLOAD_BYTES"},
    404: {"model": Problem, "description": "No such schedule"},
    409: {"model": Problem, "description": "The name is taken, or the schedule is code's"},
    422: {"model": ValidationProblem | Problem, "description": "The request is not valid"},
}


def _timing(cron: str | None, every_seconds: float | None, tz: str) -> Timing:
    try:
        return Timing(cron=cron, every_seconds=every_seconds, tz=tz)
    except InvalidSchedule as exc:
        raise ValueError(str(exc)) from None


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ScheduleName
    cron: str | None = Field(
        None,
        max_length=200,
        description="Standard cron (5 fields, or @hourly, @daily, @weekly, @monthly, "
        "@yearly), in `tz`.",
    )
    every_seconds: float | None = Field(None, description="An interval instead of cron.")
    tz: str = Field("UTC", max_length=100, description="An IANA time zone, e.g. Europe/Berlin.")
    task: ScheduledTask = Field(description="The task each tick makes (as for POST /tasks/).")
    catch_up: CatchUp = Field(
        CatchUp.ONCE,
        description="Ticks missed while no scheduler ran: skip them, run once, or run all "
        "(at most 100).",
    )
    paused: bool = False

    @model_validator(mode="after")
    def _valid_timing(self) -> Self:
        _timing(self.cron, self.every_seconds, self.tz)
        return self


class ScheduleChange(BaseModel):
    """What to change; a new ``cron`` replaces ``every_seconds`` and the other way round."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(None, max_length=200)
    every_seconds: float | None = None
    tz: str | None = Field(None, max_length=100)
    task: ScheduledTask | None = None
    catch_up: CatchUp | None = None
    paused: bool | None = None

    @model_validator(mode="after")
    def _one_timing(self) -> Self:
        if self.cron is not None and self.every_seconds is not None:
            raise ValueError("give cron or every_seconds, not both")
        return self


class ScheduleOut(BaseModel):
    name: str
    source: str = Field(description="`code` (a handler's @task(cron=...)) or `api`.")
    cron: str | None
    every_seconds: float | None
    tz: str
    task: dict[str, Any]
    catch_up: CatchUp
    paused: bool
    next_run_at: datetime | None = Field(description="The next tick; null while paused.")
    next_runs: list[datetime] = Field(description="The next few ticks; empty while paused.")
    last_run_at: datetime | None = Field(description="The latest tick that made a task.")
    last_task_id: int | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, schedule: Schedule) -> Self:
        upcoming: list[datetime] = []
        if not schedule.paused:
            try:
                ticks = timing_of(schedule).ticks_after(schedule.next_run_at)
                upcoming = [schedule.next_run_at] + [next(ticks) for _ in range(NEXT_RUNS - 1)]
            except InvalidSchedule:
                upcoming = [schedule.next_run_at]
        return cls(
            name=schedule.name,
            source=schedule.source,
            cron=schedule.cron,
            every_seconds=schedule.every_seconds,
            tz=schedule.tz,
            task=schedule.task,
            catch_up=CatchUp(schedule.catch_up),
            paused=schedule.paused,
            next_run_at=None if schedule.paused else schedule.next_run_at,
            next_runs=upcoming,
            last_run_at=schedule.last_run_at,
            last_task_id=schedule.last_task_id,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )


class ScheduleTickOut(BaseModel):
    tick_at: datetime
    task: TaskOut | None = Field(description="The task it made; null once retention deleted it.")


class ScheduleTickPage(BaseModel):
    items: list[ScheduleTickOut] = Field(description="Newest first.")
    next_before: datetime | None = Field(description="Pass as `before` for older ticks.")


def _check_task(request: Request, settings: Settings, task: ScheduledTask) -> None:
    """What a submit would refuse, refused when the schedule is written, not at each tick."""
    allowed = settings.api.queues
    queue = task.queue or settings.default_queue
    if allowed is not None and queue not in allowed:
        raise SubmissionRefused(
            f"unknown queue {queue!r}; the queues are: {', '.join(sorted(allowed))}"
        )
    webhooks = submitter_of(request).webhooks
    url = task.webhook_url or settings.webhooks.queue_urls.get(queue)
    if webhooks is not None and url is not None:
        webhooks.check(url)


async def _found(store: TaskStore, name: str) -> Schedule:
    schedule = await store.get_schedule(name)
    if schedule is None:
        raise ScheduleNotFound(f"schedule {name!r} does not exist")
    return schedule


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ScheduleOut,
    responses={code: ERRORS[code] for code in (400, 409, 413, 422)},
    summary="Create a schedule",
)
async def create_schedule(
    body: ScheduleCreate,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    _: AdminAccess,
) -> ScheduleOut:
    _check_task(request, settings, body.task)
    new = new_schedule(
        body.name,
        source="api",
        timing=_timing(body.cron, body.every_seconds, body.tz),
        task=body.task,
        catch_up=body.catch_up,
        now=datetime.now(UTC),
        paused=body.paused,
    )
    return ScheduleOut.of(await store.create_schedule(new))


@router.get("", response_model=list[ScheduleOut], summary="Every schedule, code's and the API's")
async def list_schedules(store: StoreDep, _: ReadAccess) -> list[ScheduleOut]:
    return [ScheduleOut.of(schedule) for schedule in await store.list_schedules()]


@router.get(
    "/{name}", response_model=ScheduleOut, responses={404: ERRORS[404]}, summary="A schedule"
)
async def get_schedule(name: NameParam, store: StoreDep, _: ReadAccess) -> ScheduleOut:
    return ScheduleOut.of(await _found(store, name))


@router.patch(
    "/{name}",
    response_model=ScheduleOut,
    responses={code: ERRORS[code] for code in (400, 404, 409, 413, 422)},
    summary="Change a schedule (its next run is counted again from now)",
)
async def change_schedule(
    name: NameParam,
    body: ScheduleChange,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    _: AdminAccess,
) -> ScheduleOut:
    schedule = await _found(store, name)
    fields = body.model_dump(exclude_unset=True)
    definition = set(fields) - {"paused"}
    if definition and schedule.source == "code":
        raise InvalidTransition(
            f"schedule {name!r} is declared in code: change it there (here it may only be "
            "paused, resumed or deleted)"
        )
    changes: dict[str, Any] = {}
    if body.cron is not None:
        changes |= {"cron": body.cron, "every_seconds": None}
    if body.every_seconds is not None:
        changes |= {"every_seconds": body.every_seconds, "cron": None}
    if body.tz is not None:
        changes["tz"] = body.tz
    if body.task is not None:
        _check_task(request, settings, body.task)
        changes["task"] = body.task.stored()
    if body.catch_up is not None:
        changes["catch_up"] = body.catch_up.value
    if body.paused is not None:
        changes["paused"] = body.paused
    if definition or (body.paused is False and schedule.paused):
        merged = {
            "cron": schedule.cron,
            "every_seconds": schedule.every_seconds,
            "tz": schedule.tz,
        } | {key: changes[key] for key in ("cron", "every_seconds", "tz") if key in changes}
        try:
            timing = Timing(**merged)
        except InvalidSchedule as exc:
            raise SubmissionRefused(str(exc)) from None
        changes["next_run_at"] = timing.next_after(datetime.now(UTC))
    changed = await store.change_schedule(name, changes) if changes else schedule
    if changed is None:
        raise ScheduleNotFound(f"schedule {name!r} does not exist")
    return ScheduleOut.of(changed)


async def _pause(store: TaskStore, name: str, paused: bool) -> ScheduleOut:
    changed = await set_paused(store, name, paused)
    if changed is None:
        raise ScheduleNotFound(f"schedule {name!r} does not exist")
    return ScheduleOut.of(changed)


@router.post(
    "/{name}/pause",
    response_model=ScheduleOut,
    responses={404: ERRORS[404]},
    summary="Pause a schedule: no ticks until it is resumed",
)
async def pause_schedule(name: NameParam, store: StoreDep, _: AdminAccess) -> ScheduleOut:
    return await _pause(store, name, True)


@router.post(
    "/{name}/resume",
    response_model=ScheduleOut,
    responses={404: ERRORS[404]},
    summary="Resume a schedule from its next tick (ticks of the pause are not run)",
)
async def resume_schedule(name: NameParam, store: StoreDep, _: AdminAccess) -> ScheduleOut:
    return await _pause(store, name, False)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: ERRORS[404]},
    summary="Delete a schedule (the tasks it made stay; a schedule of code comes back when "
    "a worker with its handler starts)",
)
async def delete_schedule(name: NameParam, store: StoreDep, _: AdminAccess) -> Response:
    if not await store.delete_schedule(name):
        raise ScheduleNotFound(f"schedule {name!r} does not exist")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{name}/tasks",
    response_model=ScheduleTickPage,
    responses={404: ERRORS[404]},
    summary="The ticks of a schedule and the tasks they made, newest first",
)
async def schedule_tasks(
    name: NameParam,
    store: StoreDep,
    _: ReadAccess,
    before: Annotated[datetime | None, Query(description="Only ticks before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> ScheduleTickPage:
    await _found(store, name)
    if before is not None and before.tzinfo is None:
        before = before.replace(tzinfo=UTC)
    ticks = await store.schedule_ticks(name, before=before, limit=limit)
    ids = [tick.task_id for tick in ticks if tick.task_id is not None]
    found = {task.id: task for task in await store.get_many(ids)}
    items = [
        ScheduleTickOut(
            tick_at=tick.tick_at,
            task=TaskOut.of(found[tick.task_id]) if tick.task_id in found else None,
        )
        for tick in ticks
    ]
    return ScheduleTickPage(
        items=items, next_before=ticks[-1].tick_at if len(ticks) == limit else None
    )
