"""Rows as the store's records: statuses as enums, every time aware (UTC)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.records import ApiKey, Attempt, Task, WorkerInfo


def aware(stamp: Any) -> Any:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    if isinstance(stamp, datetime) and stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp


TIMESTAMPS = (
    "run_at",
    "lease_expires_at",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "expires_at",
    "unique_until",
)


def row_to_task(row: Mapping[Any, Any]) -> Task:
    values = dict(row)
    values["status"] = TaskStatus(values["status"])
    for key in TIMESTAMPS:
        values[key] = aware(values[key])
    return Task(**values)


def row_to_attempt(row: Mapping[Any, Any]) -> Attempt:
    return Attempt(
        task_id=row["task_id"],
        run_token=row["run_token"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]),
        outcome=AttemptOutcome(row["outcome"]),
        error=row["error"],
        traceback=row["traceback"],
        retry_at=aware(row["retry_at"]),
    )


def row_to_worker(row: Mapping[Any, Any]) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        queues=list(row["queues"]),
        handlers=list(row["handlers"]),
        concurrency=row["concurrency"],
        running=row["running"],
        started_at=aware(row["started_at"]),
        last_seen_at=aware(row["last_seen_at"]),
        expires_at=aware(row["expires_at"]),
    )


def row_to_api_key(row: Mapping[Any, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        created_at=aware(row["created_at"]),
        revoked_at=aware(row["revoked_at"]),
    )
