"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from krolik.states import AttemptOutcome, DeliveryState, TaskStatus
from krolik.store.records import Attempt, Delivery, Task

MAX_JSON_DEPTH = 32
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
MAX_ID = 2**63 - 1

TaskName = Annotated[str, Field(pattern=NAME_PATTERN, description="Which handler runs the task.")]
QueueName = Annotated[str, Field(pattern=QUEUE_PATTERN)]


def check_json(value: Any, depth: int = 0) -> None:
    """Reject what PostgreSQL cannot store (NUL characters, NaN and Infinity, which
    Python's JSON parser accepts and JSON has not), integers beyond 64 bits (the JSON
    encoder's range) and absurd nesting."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"the payload is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL characters (\\u0000) are not allowed in the payload")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and Infinity are not JSON numbers")
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ValueError("integers in the payload must fit in 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json(key, depth + 1)
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)


def no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return value


UniqueFields = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class TaskCreate(BaseModel):
    """A new task. Only ``payload`` is required, as in the seed."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(description="Any JSON value; handed to the handler as is.")
    name: TaskName | None = None
    queue: QueueName | None = None
    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] | None = None
    run_at: datetime | None = None
    delay_seconds: Annotated[float, Field(ge=0, le=366 * 86400)] | None = None
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    expires_at: datetime | None = Field(
        None,
        description="Not started by then, the task ends `expired` and never runs (a time "
        "without zone is taken as UTC).",
    )
    expires_in: Annotated[float, Field(gt=0, le=366 * 86400)] | None = Field(
        None, description="Seconds from the submit: `expires_at` counted from now."
    )
    unique_key: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None,
        description="While a task of this name holds this key (pending; running too with "
        "`unique_running`; and for `unique_for` seconds), a submit of the same key gets "
        "that task back (200) instead of a new one.",
    )
    unique_for: Annotated[float, Field(gt=0, le=366 * 86400)] | None = Field(
        None, description="Seconds the key is held from the submit, whatever the task's state."
    )
    unique_fields: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None
    ) = Field(
        None,
        description="The key made of these fields of the (object) payload; without "
        "`unique_key` or this, a unique task's key is made of its whole payload.",
    )
    unique_running: bool = Field(False, description="The key is held while the task runs too.")
    priority: Annotated[int, Field(ge=-1000, le=1000)] | None = Field(
        None,
        description="Higher starts first among the due tasks of its queue. Not given: "
        "its handler's default (`@task(priority=...)`), else its queue's "
        "(`default_priority`, see `PATCH /queues/{name}`), else 0.",
    )
    concurrency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None,
        description="Counted against the queue's `max_running_per_key` (e.g. the tenant): "
        "no key runs more than that at once, so one key's backlog cannot starve the others.",
    )
    on_duplicate: Literal["return", "replace"] = Field(
        "return",
        description="`replace`: a pending holder takes this submit's payload and run time "
        "instead (debounce).",
    )
    webhook_url: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=2048,
                description="Where to POST the task's record, signed, when it ends (an "
                "http(s) URL the allow-list APP__WEBHOOKS__ALLOWED_HOSTS accepts). Without "
                "it, the queue's webhook of APP__WEBHOOKS__QUEUE_URLS, if any.",
            ),
        ]
        | None
    ) = None

    @field_validator("payload")
    @classmethod
    def _payload_storable(cls, value: Any) -> Any:
        check_json(value)
        return value

    @field_validator("idempotency_key", "webhook_url", "unique_key", "concurrency_key")
    @classmethod
    def _key_storable(cls, value: str | None) -> str | None:
        return no_nul(value)

    @field_validator("run_at", "expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # a time without zone is taken as UTC
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if self.run_at is not None and self.delay_seconds is not None:
            raise ValueError("give run_at or delay_seconds, not both")
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        if self.is_unique:
            if self.idempotency_key is not None:
                raise ValueError("give idempotency_key or a unique key, not both")
            if self.unique_key is not None and self.unique_fields is not None:
                raise ValueError("give unique_key or unique_fields, not both")
            if self.unique_fields is not None:
                if not isinstance(self.payload, dict):
                    raise ValueError("unique_fields needs an object payload")
                missing = [f for f in self.unique_fields if f not in self.payload]
                if missing:
                    raise ValueError(f"the payload has no field {', '.join(map(repr, missing))}")
        elif self.unique_running or self.on_duplicate != "return":
            raise ValueError(
                "unique_running and on_duplicate need a unique task (unique_key, unique_for "
                "or unique_fields)"
            )
        return self

    @property
    def is_unique(self) -> bool:
        return (
            self.unique_key is not None
            or self.unique_for is not None
            or self.unique_fields is not None
        )

    def derived_unique_key(self) -> str | None:
        """The key: the one given, or a digest of the chosen fields (or whole payload)."""
        if not self.is_unique:
            return None
        if self.unique_key is not None:
            return self.unique_key
        basis = (
            {name: self.payload[name] for name in self.unique_fields}
            if self.unique_fields is not None
            else self.payload
        )
        digest = hashlib.sha256(orjson.dumps(basis, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return f"sha256:{digest}"


class TaskBatch(BaseModel):
    """Up to APP__API__MAX_BATCH_SIZE tasks, created in one transaction."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskCreate] = Field(min_length=1)


class TaskBatchCreated(BaseModel):
    task_ids: list[int] = Field(description="The tasks' ids, in the order given.")
    created: list[bool] = Field(
        description="False where an idempotency key matched an existing task."
    )


class Progress(BaseModel):
    fraction: float | None = Field(description="From 0 to 1, if the handler said.")
    message: str | None
    at: datetime = Field(description="When the handler reported it.")


class TaskOut(BaseModel):
    id: int
    name: str
    queue: str
    payload: Any
    status: TaskStatus
    result: Any
    error: str | None
    attempts: int
    max_attempts: int | None
    timeout_seconds: float | None
    idempotency_key: str | None
    created_by: str | None = Field(description="The API key that created the task.")
    cancel_requested: bool
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress | None = Field(
        None, description="What the running handler last reported (``context.progress``)."
    )
    webhook_url: str | None = Field(None, description="Called when the task ends.")
    expires_at: datetime | None = Field(
        None, description="Not started by then, it ends expired (null: never)."
    )
    unique_key: str | None = Field(
        None, description="The unique key it holds (null: none, or no longer held)."
    )
    unique_until: datetime | None = Field(None, description="It holds its key until then.")
    priority: int = 0
    concurrency_key: str | None = None

    @classmethod
    def of(cls, task: Task) -> Self:
        """The model of a stored task; every field this model has, by name, validated once."""
        return cls.model_validate(cls._fields_of(task))

    @classmethod
    def json_of(cls, task: Task) -> bytes:
        """``of(task)`` as JSON, the same document written straight from the task.

        For the submit path, which answers every request: the task comes from the
        store, already of the right types, so building and validating a model only to
        dump it again costs CPU and checks nothing."""
        return orjson.dumps(cls._fields_of(task), option=orjson.OPT_UTC_Z)

    @classmethod
    def _fields_of(cls, task: Task) -> dict[str, Any]:
        return {
            name: getattr(task, name) for name in cls.model_fields if hasattr(task, name)
        } | cls._extra(task)

    @classmethod
    def _extra(cls, task: Task) -> dict[str, Any]:
        return {}


class TaskCreated(TaskOut):
    task_id: int = Field(description="The new task's id (the seed's field).")

    @classmethod
    def _extra(cls, task: Task) -> dict[str, Any]:
        return {"task_id": task.id}


class TaskDetail(TaskOut):
    traceback: str | None
    traceparent: str | None = Field(
        None, description="The W3C trace context the task was submitted with, if any."
    )
    waiting_reason: str | None = Field(
        None, description="Why a pending task is not running yet; null for other states."
    )

    @classmethod
    def _extra(cls, task: Task) -> dict[str, Any]:
        return {"waiting_reason": None}  # the route fills it in: it reads the workers


class AttemptOut(BaseModel):
    attempt: int = Field(description="The attempt's number (a released run is not counted).")
    run: int = Field(description="The run's fencing token: 1 for the first run, and so on.")
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    outcome: AttemptOutcome | None = Field(description="How the run ended; null while it runs.")
    error: str | None
    traceback: str | None

    @classmethod
    def of(cls, attempt: Attempt) -> Self:
        return cls(
            attempt=attempt.attempt,
            run=attempt.run_token,
            worker_id=attempt.worker_id,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
            duration_seconds=attempt.duration_seconds,
            outcome=attempt.outcome,
            error=attempt.error,
            traceback=attempt.traceback,
        )


class AttemptList(BaseModel):
    items: list[AttemptOut] = Field(description="Oldest first; a running attempt comes last.")


class DeliveryOut(BaseModel):
    id: int = Field(description="Sent as the Krolik-Delivery header, the same on every try.")
    url: str
    run: int = Field(description="The run that ended the task (its fencing token).")
    task_status: TaskStatus = Field(description="How the task ended.")
    state: DeliveryState = Field(
        description="pending: not answered 2xx yet, tried again; delivered; failed: given up."
    )
    attempts: int
    created_at: datetime = Field(description="When the task ended.")
    next_attempt_at: datetime | None = Field(description="When it is tried next, if pending.")
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    status_code: int | None = Field(description="The last try's HTTP status; null: no answer.")
    error: str | None = Field(description="Why the last try failed.")
    seconds: float | None = Field(description="How long the last try took.")

    @classmethod
    def of(cls, delivery: Delivery) -> Self:
        return cls(
            id=delivery.id,
            url=delivery.url,
            run=delivery.run_token,
            task_status=delivery.task_status,
            state=delivery.state,
            attempts=delivery.attempts,
            created_at=delivery.created_at,
            next_attempt_at=delivery.next_attempt_at
            if delivery.state is DeliveryState.PENDING
            else None,
            last_attempt_at=delivery.last_attempt_at,
            delivered_at=delivery.delivered_at,
            status_code=delivery.status_code,
            error=delivery.error,
            seconds=delivery.seconds,
        )


class DeliveryList(BaseModel):
    items: list[DeliveryOut] = Field(description="Oldest first.")


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next, older page.")


class Problem(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """What a request failing validation gets (FastAPI's shape)."""

    detail: list[ValidationIssue]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
