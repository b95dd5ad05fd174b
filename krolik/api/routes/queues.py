"""Queues at a glance, for people and scripts; and each queue's pause and limits.

The limits are data (``krolik_queues``), changed at run time with no restart: a change
applies to the next claim, and the tasks it lets start are woken at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from krolik.api.auth import AdminAccess, ReadAccess
from krolik.api.deps import BrokerDep, ReadsDep, SettingsDep, StoreDep
from krolik.api.errors import GUARDED_RESPONSES
from krolik.api.schemas import QUEUE_PATTERN, Problem, ValidationProblem
from krolik.errors import BrokerError
from krolik.flow import GATE_FIELDS, MOST, PRIORITY_RANGE, QueueGates, Rate, change_gates
from krolik.store.base import TaskStore

router = APIRouter(tags=["queues"], responses=GUARDED_RESPONSES)

QueueParam = Annotated[str, Path(pattern=QUEUE_PATTERN, description="The queue's name.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not readable JSON"},
    422: {"model": ValidationProblem | Problem, "description": "The request is not valid"},
}


class QueueLimits(BaseModel):
    """A queue's pause and limits; null: no limit."""

    paused: bool = Field(False, description="No new starts; submissions still accepted.")
    max_running: int | None = Field(
        None,
        ge=0,
        le=MOST,
        description="At most this many of the queue's tasks run at once, cluster-wide.",
    )
    max_running_per_key: int | None = Field(
        None,
        ge=1,
        le=MOST,
        description="At most this many tasks of one `concurrency_key` run at once.",
    )
    rate_limit: str | None = Field(
        None,
        max_length=100,
        description='At most that many starts in any window, cluster-wide ("60/minute", '
        '"10 per 2 seconds").',
    )

    default_priority: int | None = Field(
        None,
        ge=PRIORITY_RANGE[0],
        le=PRIORITY_RANGE[1],
        description="The priority of the queue's new tasks that give none and whose "
        "handler declares none (`@task(priority=...)`); null: 0.",
    )

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return None if value is None else Rate.parse(value).text

    @classmethod
    def of(cls, gates: QueueGates) -> Self:
        return cls(**{name: getattr(gates, name) for name in GATE_FIELDS})


class QueueChange(QueueLimits):
    """The fields given are set (null lifts a limit); the others are left as they are."""

    model_config = ConfigDict(extra="forbid")


class QueueDetail(BaseModel):
    queue: str
    limits: QueueLimits
    held: dict[str, int] = Field(
        description="Pending tasks held by the gates, by reason (paused, max_running, "
        "key_limit, rate_limit)."
    )
    updated_at: datetime | None = Field(description="When the limits last changed.")


class QueueOut(BaseModel):
    queue: str
    pending: int = Field(description="Due and waiting for a worker.")
    scheduled: int = Field(description="Waiting for their run_at (delays, retry backoff).")
    processing: int
    stuck: int = Field(description="Processing for longer than the stuck threshold.")
    done_last_hour: int
    failed_last_hour: int
    cancelled_last_hour: int
    expired_last_hour: int = 0
    oldest_pending_age_seconds: float | None
    consumers: int | None = Field(description="Consumers on the broker queue; null if unknown.")
    broker_messages: int | None = Field(description="Messages ready in the broker queue.")
    paused: bool = False
    held: dict[str, int] = Field(
        default_factory=dict,
        description="Pending tasks held by the queue's gates, by reason (see `GET "
        "/queues/{name}`).",
    )


@router.get("/queues", response_model=list[QueueOut], summary="Every queue, with its counts")
async def list_queues(
    reads: ReadsDep, store: StoreDep, broker: BrokerDep, settings: SettingsDep, _: ReadAccess
) -> list[QueueOut]:
    now = datetime.now(UTC)
    stats = {
        item.queue: item for item in await reads.queue_stats(settings.metrics.stuck_after_seconds)
    }
    # The gates and the held counts are read where they are written (small, and fresh
    # after a change): the primary.
    gates = {item.name: item for item in await store.list_gates()}
    held = await store.held_counts()
    names = sorted(set(stats) | {settings.default_queue} | set(gates))
    answer = []
    for name in names:
        item = stats.get(name)
        try:
            info = await broker.inspect_queue(name)
        except BrokerError:
            info = None
        oldest = item.oldest_pending_at if item else None
        answer.append(
            QueueOut(
                queue=name,
                pending=item.pending if item else 0,
                scheduled=item.scheduled if item else 0,
                processing=item.processing if item else 0,
                stuck=item.stuck if item else 0,
                done_last_hour=item.done_last_hour if item else 0,
                failed_last_hour=item.failed_last_hour if item else 0,
                cancelled_last_hour=item.cancelled_last_hour if item else 0,
                expired_last_hour=item.expired_last_hour if item else 0,
                oldest_pending_age_seconds=max((now - oldest).total_seconds(), 0.0)
                if oldest
                else None,
                consumers=info.consumers if info else None,
                broker_messages=info.messages if info else None,
                paused=name in gates and gates[name].paused,
                held=held.get(name, {}),
            )
        )
    return answer


async def _detail(store: TaskStore, gates: QueueGates) -> QueueDetail:
    held = await store.held_counts()
    return QueueDetail(
        queue=gates.name,
        limits=QueueLimits.of(gates),
        held=held.get(gates.name, {}),
        updated_at=gates.updated_at,
    )


@router.get("/queues/{name}", response_model=QueueDetail, summary="A queue's limits and held tasks")
async def get_queue(name: QueueParam, store: StoreDep, _: ReadAccess) -> QueueDetail:
    return await _detail(store, await store.get_gates(name))


@router.patch(
    "/queues/{name}",
    response_model=QueueDetail,
    responses=ERRORS,
    summary="Change a queue's limits (null lifts one)",
)
async def change_queue(
    name: QueueParam, body: QueueChange, store: StoreDep, _: AdminAccess
) -> QueueDetail:
    changes = body.model_dump(include=body.model_fields_set)
    return await _detail(store, await change_gates(store, name, changes))


@router.post("/queues/{name}/pause", response_model=QueueDetail, summary="Pause a queue")
async def pause_queue(name: QueueParam, store: StoreDep, _: AdminAccess) -> QueueDetail:
    """No new starts while paused; running tasks finish; submissions are still accepted
    (their tasks wait, held, until the queue is resumed)."""
    return await _detail(store, await change_gates(store, name, {"paused": True}))


@router.post("/queues/{name}/resume", response_model=QueueDetail, summary="Resume a queue")
async def resume_queue(name: QueueParam, store: StoreDep, _: AdminAccess) -> QueueDetail:
    """The held tasks are dispatched again, as many as the queue's limits let start."""
    return await _detail(store, await change_gates(store, name, {"paused": False}))
