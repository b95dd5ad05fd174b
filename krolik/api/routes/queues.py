"""Queues at a glance, for people and scripts."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from krolik.api.auth import ReadAccess
from krolik.api.deps import BrokerDep, ReadsDep, SettingsDep
from krolik.api.errors import GUARDED_RESPONSES
from krolik.errors import BrokerError

router = APIRouter(tags=["queues"], responses=GUARDED_RESPONSES)


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


@router.get("/queues", response_model=list[QueueOut], summary="Every queue, with its counts")
async def list_queues(
    reads: ReadsDep, broker: BrokerDep, settings: SettingsDep, _: ReadAccess
) -> list[QueueOut]:
    now = datetime.now(UTC)
    stats = {
        item.queue: item for item in await reads.queue_stats(settings.metrics.stuck_after_seconds)
    }
    names = sorted(set(stats) | {settings.default_queue})
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
            )
        )
    return answer
