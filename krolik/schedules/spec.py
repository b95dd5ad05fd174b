"""What a schedule is made of, checked once: its timing, its catch-up policy and the task
each tick makes, whether it comes from code or from the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from krolik.api.schemas import QueueName, TaskName, check_json, no_nul
from krolik.schedules.timing import CatchUp, Timing
from krolik.store.records import NewSchedule, NewTask, Schedule

SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"
ScheduleName = Annotated[str, Field(pattern=SCHEDULE_NAME_PATTERN)]
CREATOR_PREFIX = "schedule:"
"""Tasks a schedule makes are created by ``schedule:<name>``."""


class ScheduledTask(BaseModel):
    """The task each tick makes: the body of ``POST /tasks/`` without what a tick decides
    itself (when it runs) or cannot share (an idempotency key)."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = None
    name: TaskName | None = None
    queue: QueueName | None = None
    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] | None = None
    expires_in: Annotated[float, Field(gt=0, le=366 * 86400)] | None = Field(
        None, description="Each tick's task ends expired if not started this long after."
    )
    webhook_url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None

    @field_validator("payload")
    @classmethod
    def _payload_storable(cls, value: Any) -> Any:
        check_json(value)
        return value

    @field_validator("webhook_url")
    @classmethod
    def _url_storable(cls, value: str | None) -> str | None:
        return no_nul(value)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def timing_of(schedule: Schedule | NewSchedule) -> Timing:
    return Timing(cron=schedule.cron, every_seconds=schedule.every_seconds, tz=schedule.tz)


def new_schedule(
    name: str,
    *,
    source: str,
    timing: Timing,
    task: ScheduledTask,
    catch_up: CatchUp,
    now: datetime,
    paused: bool = False,
) -> NewSchedule:
    """A schedule whose first run is its first tick after ``now``."""
    return NewSchedule(
        name=name,
        source=source,
        cron=timing.cron,
        every_seconds=timing.every_seconds,
        tz=timing.tz,
        task=task.stored(),
        catch_up=catch_up.value,
        next_run_at=timing.next_after(now),
        paused=paused,
    )


def task_of(schedule: Schedule, default_queue: str, default_name: str) -> NewTask:
    """The task one tick of ``schedule`` makes (``ValidationError`` if its stored task is
    not valid any more)."""
    spec = ScheduledTask.model_validate(schedule.task)
    return NewTask(
        name=spec.name or default_name,
        queue=spec.queue or default_queue,
        payload=spec.payload,
        max_attempts=spec.max_attempts,
        timeout_seconds=spec.timeout_seconds,
        expires_in_seconds=spec.expires_in,
        webhook_url=spec.webhook_url,
        created_by=f"{CREATOR_PREFIX}{schedule.name}",
    )
