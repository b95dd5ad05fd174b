"""The events of one task, derived from what the store keeps: its row and its attempts.

Nothing is logged per event: the history is a function of the record, so a client that
reconnects with the id of the last event it saw gets exactly what came after. An event's
id is ``run.phase.sub`` and ids of one task only grow:

* ``0.0.0`` queued;
* ``t.1.0`` run t started; ``t.2.<n>`` the n-th progress write of the run (the latest only);
* ``t.3.0`` run t ended and the task waits to run again (``retry_scheduled``);
* ``t.4.0`` the task finished (t: its last run's token, 0 if it never ran).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.records import Attempt, Task, running_attempt

EventKey = tuple[int, int, int]

QUEUED, STARTED, PROGRESS, RETRY_SCHEDULED, FINISHED = (
    "queued",
    "started",
    "progress",
    "retry_scheduled",
    "finished",
)
_GOES_ON = frozenset({AttemptOutcome.RETRIED, AttemptOutcome.RELEASED})
"""Outcomes after which the task always runs again."""


@dataclass(frozen=True, slots=True)
class TaskEvent:
    key: EventKey
    kind: str
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return ".".join(map(str, self.key))


def parse_event_id(value: str) -> EventKey:
    """A ``Last-Event-ID`` as sent back by a client; ``ValueError`` if it is not ours."""
    parts = value.strip().split(".")
    if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
        raise ValueError(value)
    run, phase, sub = (int(part) for part in parts)
    return run, phase, sub


def timeline(task: Task, attempts: Sequence[Attempt]) -> list[TaskEvent]:
    """Every event of the task so far, oldest first, as of ``task``.

    ``attempts`` must be read after ``task`` (an attempt record commits with the
    transition that ended its run, so it then holds every run the task has ended);
    records of runs newer than ``task`` are left out, so the two agree."""
    attempts = [a for a in attempts if _ended_by(task, a)]
    events = [
        TaskEvent(
            (0, 0, 0),
            QUEUED,
            {"task_id": task.id, "queue": task.queue, "name": task.name, "at": task.created_at},
        )
    ]
    for attempt in sorted(attempts, key=lambda a: a.run_token):
        events.append(_started(task, attempt))
        ended_the_task = (
            task.status.is_final
            and attempt.run_token == task.run_token
            and attempt.outcome not in _GOES_ON
        )
        if not ended_the_task:
            events.append(_retry_scheduled(task, attempt))
    if task.status is TaskStatus.PROCESSING and all(
        attempt.run_token != task.run_token for attempt in attempts
    ):
        events.append(_started(task, running_attempt(task)))
        if task.progress is not None:
            events.append(progress_event(task))
    if task.status.is_final:
        events.append(TaskEvent((task.run_token, 4, 0), FINISHED, {"task_id": task.id}))
    return events


def _ended_by(task: Task, attempt: Attempt) -> bool:
    """Whether the run of ``attempt`` had ended when ``task`` was read."""
    return attempt.run_token < task.run_token or (
        attempt.run_token == task.run_token and task.status is not TaskStatus.PROCESSING
    )


def after(events: Sequence[TaskEvent], last: EventKey | None) -> list[TaskEvent]:
    return list(events) if last is None else [event for event in events if event.key > last]


def progress_event(task: Task) -> TaskEvent:
    report = task.progress or {}
    at = report.get("at")
    sequence = report.get("seq")
    if not isinstance(sequence, int):  # written by an older worker: its report's time
        sequence = _millis(at) if isinstance(at, str) else 0
    return TaskEvent(
        (task.run_token, 2, sequence),
        PROGRESS,
        {
            "task_id": task.id,
            "attempt": task.attempts,
            "fraction": report.get("fraction"),
            "message": report.get("message"),
            "at": at,
        },
    )


def latest_kind(task: Task) -> str:
    """What the task's last event was, from its row alone (for the change streams)."""
    if task.status.is_final:
        return FINISHED
    if task.status is TaskStatus.PROCESSING:
        return PROGRESS if task.progress is not None else STARTED
    return RETRY_SCHEDULED if task.run_token > 0 else QUEUED


def _started(task: Task, attempt: Attempt) -> TaskEvent:
    return TaskEvent(
        (attempt.run_token, 1, 0),
        STARTED,
        {
            "task_id": task.id,
            "attempt": attempt.attempt,
            "run": attempt.run_token,
            "worker_id": attempt.worker_id,
            "at": attempt.started_at,
        },
    )


def _retry_scheduled(task: Task, attempt: Attempt) -> TaskEvent:
    return TaskEvent(
        (attempt.run_token, 3, 0),
        RETRY_SCHEDULED,
        {
            "task_id": task.id,
            "attempt": attempt.attempt,
            "run": attempt.run_token,
            "outcome": attempt.outcome,
            "error": attempt.error,
            "at": attempt.finished_at,
            "run_at": attempt.retry_at,
        },
    )


def _millis(stamp: str) -> int:
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return 0
