"""The Server-Sent Events of the API, read line by line into typed events.

``GET /tasks/{id}/events`` tells one task's story (queued, started, progress,
retry_scheduled, finished) and ends after ``finished``; each event has an id, sent back as
``Last-Event-ID`` when the client reconnects, so nothing is seen twice or missed.
``GET /events`` streams the changes of many tasks and never ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from krolik_client.models import Record, Task


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class EventStreamParser:
    """The ``text/event-stream`` format: fields until a blank line, comments ignored."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its end); the event it completes, if any."""
        if not line:
            if not self._data:
                self._event = "message"
                return None
            event = ServerSentEvent(self._event, "\n".join(self._data), self._id)
            self._event, self._data, self._id = "message", [], None
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\x00" not in value:
            self._id = value
        return None


class TaskEventBase(Record):
    id: str | None = None
    """The event's id (``run.phase.sub``); ids of one task only grow."""
    task_id: int


class Queued(TaskEventBase):
    kind: Literal["queued"] = "queued"
    queue: str
    name: str
    at: datetime


class Started(TaskEventBase):
    kind: Literal["started"] = "started"
    attempt: int
    run: int
    worker_id: str | None = None
    at: datetime | None = None


class ProgressReported(TaskEventBase):
    kind: Literal["progress"] = "progress"
    attempt: int
    fraction: float | None = None
    message: str | None = None
    at: datetime | None = None


class RetryScheduled(TaskEventBase):
    kind: Literal["retry_scheduled"] = "retry_scheduled"
    attempt: int
    run: int
    outcome: str | None = None
    error: str | None = None
    at: datetime | None = None
    run_at: datetime | None = None


class Finished(TaskEventBase):
    """The last event: the task's final record."""

    kind: Literal["finished"] = "finished"
    task: Task


class OtherEvent(Record):
    """An event this client does not know (from a newer server), kept as sent."""

    kind: str
    id: str | None = None
    data: Any = None


KnownEvent = Queued | Started | ProgressReported | RetryScheduled | Finished
TaskEvent = KnownEvent | OtherEvent

_KNOWN: TypeAdapter[KnownEvent] = TypeAdapter(Annotated[KnownEvent, Field(discriminator="kind")])
_KINDS = frozenset({"queued", "started", "progress", "retry_scheduled", "finished"})


def task_event(sent: ServerSentEvent) -> TaskEvent:
    data = json.loads(sent.data) if sent.data else None
    if sent.event not in _KINDS or not isinstance(data, dict):
        return OtherEvent(kind=sent.event, id=sent.id, data=data)
    return _KNOWN.validate_python({**data, "kind": sent.event, "id": sent.id})


class TaskChange(Record):
    """A change of one task on ``GET /events``: its latest kind of event and its record."""

    kind: str
    task: Task


class Lagged(Record):
    """Changes the server dropped because this client read too slowly."""

    kind: Literal["lagged"] = "lagged"
    dropped: int


Change = TaskChange | Lagged


def change_event(sent: ServerSentEvent) -> Change:
    data = json.loads(sent.data) if sent.data else {}
    if sent.event == "lagged":
        return Lagged.model_validate(data)
    return TaskChange(kind=sent.event, task=Task.model_validate(data.get("task")))
