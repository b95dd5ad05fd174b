"""What a submit sends: the body of ``POST /tasks/`` from a payload and keyword options.

Every submit carries an idempotency key, the caller's or one made here, so that the
client may send it again after a dropped connection: a server that committed the first
try answers the second with the same task. A unique task (``unique_key``,
``unique_fields``, ``unique_for``) has no idempotency key (the server refuses both); its
unique key plays that part.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

from krolik_client.handlers import HandlerTypes


class SubmitOptions(TypedDict, total=False):
    """The keyword options of ``submit`` and ``submit_many``; all are optional."""

    queue: str
    delay: float | timedelta  # start no sooner than this long from now (delay_seconds)
    run_at: datetime
    priority: int
    idempotency_key: str
    max_attempts: int
    timeout: float | timedelta  # each run's time limit (timeout_seconds)
    expires_at: datetime
    expires_in: float | timedelta
    unique_key: str
    unique_for: float | timedelta
    unique_fields: Sequence[str]
    unique_running: bool
    on_duplicate: Literal["return", "replace"]
    concurrency_key: str
    webhook_url: str


_RENAMED = {"delay": "delay_seconds", "timeout": "timeout_seconds"}
_UNIQUE = ("unique_key", "unique_for", "unique_fields")
_KNOWN = SubmitOptions.__optional_keys__


def task_body(types: HandlerTypes, payload: Any, options: SubmitOptions) -> dict[str, Any]:
    """The JSON body of one task, with an idempotency key of its own unless it is unique."""
    unknown = set(options) - _KNOWN
    if unknown:
        raise TypeError(f"unknown submit options: {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {"name": types.name, "payload": types.dump_payload(payload)}
    for key, value in options.items():
        if value is not None:
            body[_RENAMED.get(key, key)] = _json(value)
    if "idempotency_key" not in body and not any(key in body for key in _UNIQUE):
        body["idempotency_key"] = new_idempotency_key()
    return body


def new_idempotency_key() -> str:
    return f"krolik-client-{uuid.uuid4()}"


def seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _json(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return value


class ScheduledTaskOptions(TypedDict, total=False):
    """What each tick's task is made with, besides its name and payload."""

    queue: str
    max_attempts: int
    timeout: float | timedelta  # each run's time limit (timeout_seconds)
    expires_in: float | timedelta
    webhook_url: str


_SCHEDULED_KNOWN = ScheduledTaskOptions.__optional_keys__


def scheduled_task(
    types: HandlerTypes, payload: Any, options: ScheduledTaskOptions
) -> dict[str, Any]:
    """The ``task`` of a schedule: a task body without timing or idempotency key, which
    each tick decides itself."""
    unknown = set(options) - _SCHEDULED_KNOWN
    if unknown:
        raise TypeError(f"unknown options of a scheduled task: {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {"name": types.name, "payload": types.dump_payload(payload)}
    for key, value in options.items():
        if value is not None:
            body[_RENAMED.get(key, key)] = _json(value)
    return body
