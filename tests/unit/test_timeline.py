"""A task's events follow from its record alone, ids only grow, and a snapshot of the
task with newer attempt records still gives the task's own timeline."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from krolik.results.timeline import after, parse_event_id, timeline
from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.records import Attempt, Task

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def task(status: TaskStatus, run_token: int, **fields: object) -> Task:
    base = Task(
        id=1, name="echo", queue="default", payload=None, status=status, result=None,
        error=None, traceback=None, attempts=run_token, max_attempts=3, timeout_seconds=None,
        idempotency_key=None, idempotency_scope=None, request_hash=None, request_id=None,
        created_by=None, worker_id="w", cancel_requested=False, run_token=run_token,
        run_at=NOW, lease_expires_at=None, created_at=NOW, updated_at=NOW, started_at=NOW,
        finished_at=None,
    )  # fmt: skip
    return replace(base, **fields)  # type: ignore[arg-type]


def attempt(token: int, outcome: AttemptOutcome) -> Attempt:
    return Attempt(1, token, token, "w", NOW, NOW, outcome, "boom", None)


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [event.kind for event in events]


def test_a_task_that_failed_twice_then_succeeded() -> None:
    done = task(TaskStatus.DONE, 3)
    runs = [
        attempt(1, AttemptOutcome.RETRIED),
        attempt(2, AttemptOutcome.LOST),
        attempt(3, AttemptOutcome.SUCCEEDED),
    ]
    events = timeline(done, runs)
    assert kinds(events) == [
        "queued", "started", "retry_scheduled", "started", "retry_scheduled", "started",
        "finished",
    ]  # fmt: skip
    keys = [event.key for event in events]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_records_newer_than_the_task_read_are_left_out() -> None:
    running = task(TaskStatus.PROCESSING, 2)
    newer = [attempt(1, AttemptOutcome.RETRIED), attempt(2, AttemptOutcome.FAILED)]
    assert kinds(timeline(running, newer)) == ["queued", "started", "retry_scheduled", "started"]


def test_progress_of_the_running_run_only() -> None:
    report = {"fraction": 0.5, "message": "half", "at": "2026-12-02T00:00:01Z"}
    running = task(TaskStatus.PROCESSING, 1, progress=report)
    [*_, event] = timeline(running, [])
    assert (event.kind, event.data["fraction"], event.key) == (
        "progress",
        0.5,
        (1, 2, int(datetime(2026, 12, 2, 0, 0, 1, tzinfo=UTC).timestamp() * 1000)),
    )
    finished = task(TaskStatus.DONE, 1, progress=None)
    assert "progress" not in kinds(timeline(finished, [attempt(1, AttemptOutcome.SUCCEEDED)]))


def test_a_cancel_while_waiting_for_a_retry_keeps_the_retry() -> None:
    cancelled = task(TaskStatus.CANCELLED, 1)
    events = timeline(cancelled, [attempt(1, AttemptOutcome.RETRIED)])
    assert kinds(events) == ["queued", "started", "retry_scheduled", "finished"]


def test_after_an_id_comes_only_what_followed() -> None:
    events = timeline(task(TaskStatus.DONE, 1), [attempt(1, AttemptOutcome.SUCCEEDED)])
    assert kinds(after(events, parse_event_id(events[1].id))) == ["finished"]
    assert after(events, None) == events


@pytest.mark.parametrize("bad", ["", "1.2", "a.b.c", "1.2.3.4", "-1.0.0", "\uff11.0.0"])
def test_ids_that_are_not_ours_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_event_id(bad)
