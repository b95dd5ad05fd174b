"""The worker's progress writer, on both stores: each report it writes is a new event.

A handler may report many times within one millisecond; the first report is written at
once and the latest of the rest a moment later. The follower of the task's events must
see that second write as an event after the first, or the stream never shows how far the
run really got.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from krolik.events import Observer
from krolik.results.timeline import progress_event
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, RunRef, Task
from krolik.worker import progress as progress_module
from krolik.worker.progress import ProgressWriter

FROZEN = datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC)


class FrozenClock(datetime):
    """Every report of the run is stamped in the same millisecond."""

    @classmethod
    def now(cls, tz: object = None) -> FrozenClock:
        return cls.fromtimestamp(FROZEN.timestamp(), UTC)


class Written(Observer):
    def __init__(self) -> None:
        self.changes: asyncio.Queue[Task] = asyncio.Queue()

    def task_changed(self, task: Task) -> None:
        self.changes.put_nowait(task)


async def test_reports_of_one_millisecond_written_apart_are_two_events(
    any_store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "datetime", FrozenClock)
    [enqueued] = await any_store.enqueue([NewTask(name="echo", queue="default", payload=None)])
    claimed = await any_store.claim(enqueued.task.id, "progress-worker", 30, {"echo": 3})
    assert claimed is not None
    written = Written()
    writer = ProgressWriter(any_store, written, interval_seconds=0.05)
    report = writer.sink(claimed, RunRef.of(claimed))

    events = []
    for step in (1, 2, 3):
        report(step / 3, f"step {step}")
        await asyncio.sleep(0)  # as a handler's awaits do: the first write begins
    for _ in range(2):  # the first report at once, the latest of the others after it
        await asyncio.wait_for(written.changes.get(), 10)
        task = await any_store.get(claimed.id)
        assert task is not None
        events.append(progress_event(task))

    assert [event.data["message"] for event in events] == ["step 1", "step 3"]
    assert events[0].key < events[1].key
    writer.forget(RunRef.of(claimed))
