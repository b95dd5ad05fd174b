"""The records the API answers with, as typed models.

They mirror the server's response schemas but ignore fields they do not know, so a
client keeps working against a newer server that added some.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in {
            TaskStatus.DONE,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.EXPIRED,
        }


class Progress(Record):
    fraction: float | None = None
    message: str | None = None
    at: datetime


class Task(Record):
    """A task as ``GET /tasks`` lists it; ``result`` is the handler's JSON as stored."""

    id: int
    name: str
    queue: str
    payload: Any = None
    status: TaskStatus
    result: Any = None
    error: str | None = None
    attempts: int
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    created_by: str | None = None
    cancel_requested: bool = False
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    webhook_url: str | None = None
    expires_at: datetime | None = None
    unique_key: str | None = None
    unique_until: datetime | None = None
    priority: int | None = None
    concurrency_key: str | None = None


class TaskDetail(Task):
    """A task as ``GET /tasks/{id}`` reads it: with the last traceback, and why a pending
    task waits."""

    traceback: str | None = None
    traceparent: str | None = None
    waiting_reason: str | None = None


class TaskPage(Record):
    items: list[Task]
    next_cursor: str | None = None


class BatchCreated(Record):
    task_ids: list[int]
    created: list[bool]


class Attempt(Record):
    attempt: int
    run: int
    worker_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    outcome: str | None = None
    """succeeded, failed, retried, cancelled, released, snoozed or lost; None while it runs."""
    error: str | None = None
    traceback: str | None = None


class AttemptList(Record):
    items: list[Attempt]


class Delivery(Record):
    """One webhook call of a task's end, with its tries so far."""

    id: int
    url: str
    run: int
    task_status: TaskStatus
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    seconds: float | None = None


class DeliveryList(Record):
    items: list[Delivery]


class QueueStats(Record):
    """A queue's counts, as ``GET /queues`` gives them."""

    queue: str
    pending: int
    scheduled: int
    processing: int
    stuck: int
    done_last_hour: int
    failed_last_hour: int
    cancelled_last_hour: int
    expired_last_hour: int = 0
    oldest_pending_age_seconds: float | None = None
    consumers: int | None = None
    broker_messages: int | None = None
    paused: bool = False
    held: dict[str, int] = {}


class QueueLimits(Record):
    paused: bool = False
    max_running: int | None = None
    max_running_per_key: int | None = None
    rate_limit: str | None = None
    default_priority: int | None = None


class QueueDetail(Record):
    queue: str
    limits: QueueLimits
    held: dict[str, int] = {}
    updated_at: datetime | None = None


class Worker(Record):
    id: str
    host: str
    pid: int
    queues: list[str]
    handlers: list[str]
    concurrency: int
    running: int
    started_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    alive: bool


class Schedule(Record):
    name: str
    source: str
    """``code`` (a handler's ``@task(cron=...)``) or ``api``."""
    cron: str | None = None
    every_seconds: float | None = None
    tz: str
    task: dict[str, Any]
    catch_up: str
    paused: bool
    next_run_at: datetime | None = None
    next_runs: list[datetime] = []
    last_run_at: datetime | None = None
    last_task_id: int | None = None
    created_at: datetime
    updated_at: datetime


class ScheduleTick(Record):
    tick_at: datetime
    task: Task | None = None


class ScheduleTickPage(Record):
    items: list[ScheduleTick]
    next_before: datetime | None = None


class Health(Record):
    status: str
    checks: dict[str, str] = {}


class HasTaskId(Protocol):
    @property
    def id(self) -> int: ...


TaskRef = int | HasTaskId
"""A task: its id, or anything with the id (a record, a handle)."""


def id_of(task: TaskRef) -> int:
    return task if isinstance(task, int) else task.id
