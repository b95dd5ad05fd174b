"""What the store takes and gives back: plain frozen records, no behaviour beyond reading.

The seam (``base.py``) speaks in these; the SQL stores turn rows into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from krolik.states import AttemptOutcome, DeliveryState, TaskStatus


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to enqueue. ``run_at`` None means as soon as possible."""

    name: str
    queue: str
    payload: Any
    max_attempts: int | None = None
    """None: the handler's default, written in when a worker first claims the task."""
    timeout_seconds: float | None = None
    run_at: datetime | None = None
    delay_seconds: float | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    """A fingerprint of the request that sent ``idempotency_key``: the same key sent again
    with another fingerprint is a conflict (``Enqueued.mismatch``)."""
    request_id: str | None = None
    created_by: str | None = None
    """The caller (API key name); idempotency keys are unique per caller."""
    webhook_url: str | None = None
    """Where to POST the task's record when it ends (checked by the submitter)."""
    traceparent: str | None = None
    """The W3C trace context of the submit, if it came with one."""
    expires_at: datetime | None = None
    expires_in_seconds: float | None = None
    """Not started by then (or this long after the insert), the task ends expired."""
    unique_key: str | None = None
    """With a key, a task of the same name holding it is given back instead (see
    ``krolik_tasks.unique_key``)."""
    unique_for_seconds: float | None = None
    unique_running: bool = False
    unique_replace: bool = False
    """A pending holder takes this task's payload and run time instead (debounce)."""
    priority: int | None = None
    """Higher starts first; None: the handler's default (``krolik_handlers``), else the
    queue's (``krolik_queues.default_priority``), else 0, chosen by the insert itself."""
    concurrency_key: str | None = None
    """Counted against the queue's ``max_running_per_key`` (e.g. the tenant)."""

    @property
    def is_plain(self) -> bool:
        """Neither an idempotency key nor a unique key: the stores' one-statement insert,
        and the submitter's shared commit."""
        return self.idempotency_key is None and self.unique_key is None


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    name: str
    queue: str
    payload: Any
    status: TaskStatus
    result: Any
    error: str | None
    traceback: str | None
    attempts: int
    max_attempts: int | None
    timeout_seconds: float | None
    idempotency_key: str | None
    idempotency_scope: str | None
    request_hash: str | None
    request_id: str | None
    created_by: str | None
    worker_id: str | None
    cancel_requested: bool
    run_token: int
    """The fencing token of the current or last run (see ``RunRef``)."""
    run_at: datetime
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Any = None
    """The running handler's last report: ``{"fraction", "message", "at"}``, or None."""
    webhook_url: str | None = None
    traceparent: str | None = None
    expires_at: datetime | None = None
    unique_key: str | None = None
    unique_until: datetime | None = None
    unique_running: bool = False
    priority: int = 0
    concurrency_key: str | None = None
    held: str | None = None
    """Why a pending task of a gated queue waits (``Hold``), None otherwise."""
    gated: bool = False
    """Claimed through its queue's gates (not stored): its run's end frees a slot."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a task, as it ended (or, with ``outcome`` None, as it runs now)."""

    task_id: int
    run_token: int
    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: AttemptOutcome | None
    error: str | None
    traceback: str | None
    retry_at: datetime | None = None
    """When the task was due again after this run (if it went back to wait)."""

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


def running_attempt(task: Task) -> Attempt:
    """The run a processing task is in, as an attempt not yet ended."""
    return Attempt(
        task_id=task.id,
        run_token=task.run_token,
        attempt=task.attempts,
        worker_id=task.worker_id,
        started_at=task.started_at,
        finished_at=None,
        outcome=None,
        error=None,
        traceback=None,
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook call of an ended task, as the store keeps it."""

    id: int
    task_id: int
    run_token: int
    """The run that ended the task (a task retried and ended again is called again)."""
    url: str
    task_status: TaskStatus
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    status_code: int | None
    error: str | None
    seconds: float | None


@dataclass(frozen=True, slots=True)
class DeliveryAnswer:
    """How one claimed attempt of a delivery went, for ``record_deliveries``."""

    delivery_id: int
    attempt: int
    """The delivery's ``attempts`` as the claim left it: the guard of this answer."""
    delivered: bool
    status_code: int | None
    error: str | None
    seconds: float | None
    retry_in_seconds: float | None
    """When not delivered: try again this much later; None: give up (failed)."""


@dataclass(frozen=True, slots=True)
class Enqueued:
    task: Task
    created: bool
    """False when an idempotency key matched an existing task."""
    mismatch: bool = False
    """The key matched a task created by a request with another body: refuse it (409)."""
    outbox: OutboxEntry | None = None
    """The task's outbox row, already claimed for the caller to publish (see ``enqueue``)."""
    replaced: bool = False
    """A unique key's pending holder took the new payload and run time (``unique_replace``)."""


@dataclass(frozen=True, slots=True)
class RunRef:
    """One claimed run of a task: only the holder of its token may extend or finish it.

    ``token`` is the task's ``run_token`` as this run's claim set it. Every claim takes
    a new one and none is ever given out twice for a task, so a stale run (its lease
    lost, the task released and claimed again, even by the same worker at the same
    attempt number) never passes a guard meant for the current run.
    """

    task_id: int
    token: int
    attempt: int
    worker_id: str

    @classmethod
    def of(cls, task: Task) -> RunRef:
        """The run a claim just started."""
        return cls(task.id, task.run_token, task.attempts, task.worker_id or "")


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    task_id: int
    queue: str
    name: str


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process as it registered itself, and until when it counts as alive."""

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

    def serves(self, queue: str, name: str) -> bool:
        return queue in self.queues and name in self.handlers


@dataclass(frozen=True, slots=True)
class RescuedTask:
    task_id: int
    status: TaskStatus
    attempts: int
    queue: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue at a glance; ``*_last_hour`` count tasks that finished in the last hour."""

    queue: str
    pending: int
    """Due and waiting for a worker."""
    scheduled: int
    """Waiting for their run_at (delays and retry backoff)."""
    processing: int
    stuck: int
    """Processing for longer than the stuck threshold."""
    done_last_hour: int
    failed_last_hour: int
    cancelled_last_hour: int
    oldest_pending_at: datetime | None
    """When the oldest due pending task became due."""
    expired_last_hour: int = 0


@dataclass(frozen=True, slots=True)
class PruneRule:
    """Finished tasks of one status, finished longer ago than ``older_than_seconds``, of
    ``queues`` (None: any queue) except ``except_queues``: what the cleaner deletes."""

    status: TaskStatus
    older_than_seconds: float
    queues: tuple[str, ...] | None = None
    except_queues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """A schedule to write: its timing, the task each tick makes, and its first tick."""

    name: str
    source: str
    """``code`` (a handler's ``@task(cron=...)``) or ``api``."""
    cron: str | None
    every_seconds: float | None
    tz: str
    task: dict[str, Any]
    """The task's fields, as the body of ``POST /tasks/`` gives them."""
    catch_up: str
    next_run_at: datetime
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    source: str
    cron: str | None
    every_seconds: float | None
    tz: str
    task: dict[str, Any]
    catch_up: str
    paused: bool
    next_run_at: datetime
    last_run_at: datetime | None
    """The latest tick that made a task."""
    last_task_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    """A tick that made a task (the task is gone once retention deleted it)."""

    schedule: str
    tick_at: datetime
    task_id: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DuePlan:
    """What a scheduler asks for one due schedule: tasks for ``ticks`` (one each, the
    same ``task``), then the schedule's next run."""

    ticks: list[datetime]
    next_run_at: datetime
    task: NewTask | None
    """None: no task can be made (the schedule's task is not valid any more)."""


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """What ``run_due_schedules`` did for one schedule."""

    schedule: str
    made: list[tuple[datetime, Task]]
    """Each tick that made its task now, and the task."""
    taken: int
    """Ticks of the plan another scheduler had made already (none were made twice)."""
    next_run_at: datetime


@dataclass(frozen=True, slots=True)
class OutboxStats:
    backlog: int
    """Due outbox rows not yet published."""
    oldest_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: only a hash of the secret is kept."""

    id: int
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: TaskStatus | None = None
    name: str | None = None
    queue: str | None = None
