"""Handlers' progress reports, coalesced: at most one write a second per task.

A handler may report on every item it processes; the worker keeps only the latest
report of each run and writes it when that run's last write is a second old, through
the run's guarded statement (a run that lost its lease writes nothing). Reports never
wait for the store, so they never slow a handler or the queue.

Each write of a run carries the next number of a count (``seq``): it is what makes the
write a new event for the task's followers, where the time of the report cannot (a
handler reports many times within one millisecond).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

from krolik.events import Observer
from krolik.log import get_logger
from krolik.registry import ProgressSink
from krolik.store.base import TaskStore
from krolik.store.records import RunRef, Task

log = get_logger(__name__)

INTERVAL_SECONDS = 1.0


class ProgressWriter:
    def __init__(
        self,
        store: TaskStore,
        observer: Observer,
        *,
        interval_seconds: float = INTERVAL_SECONDS,
    ) -> None:
        self.store = store
        self.observer = observer
        self.interval = interval_seconds
        self._latest: dict[RunRef, tuple[Task, dict[str, Any]]] = {}
        self._last_write: dict[RunRef, float] = {}
        self._sequence: dict[RunRef, int] = {}
        self._scheduled: dict[RunRef, asyncio.TimerHandle | asyncio.Task[None]] = {}
        self._live: set[RunRef] = set()
        self.writes = 0

    def sink(self, task: Task, ref: RunRef) -> ProgressSink:
        """What the run's ``TaskContext.progress`` calls, from any thread."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        self._live.add(ref)

        def report(fraction: float | None, message: str | None) -> None:
            stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            entry = {"fraction": fraction, "message": message, "at": stamp}
            if threading.get_ident() == loop_thread:
                self._report(task, ref, entry)
            else:
                loop.call_soon_threadsafe(self._report, task, ref, entry)

        return report

    def _report(self, task: Task, ref: RunRef, entry: dict[str, Any]) -> None:
        if ref not in self._live:
            return  # a report from a thread that came after the run ended
        self._latest[ref] = (task, entry)
        if ref in self._scheduled:
            return  # the write due soon takes this report
        wait = self._last_write.get(ref, -self.interval) + self.interval - time.monotonic()
        loop = asyncio.get_running_loop()
        if wait <= 0:
            self._scheduled[ref] = loop.create_task(self._write(ref))
        else:
            self._scheduled[ref] = loop.call_later(wait, self._start_write, ref)

    def _start_write(self, ref: RunRef) -> None:
        self._scheduled[ref] = asyncio.get_running_loop().create_task(self._write(ref))

    async def _write(self, ref: RunRef) -> None:
        try:
            pending = self._latest.pop(ref, None)
            if pending is None:
                return
            task, entry = pending
            self._last_write[ref] = time.monotonic()
            sequence = self._sequence[ref] = self._sequence.get(ref, 0) + 1
            entry = {**entry, "seq": sequence}
            try:
                [kept] = await self.store.record_progress([(ref, entry)])
            except Exception as exc:  # a report is not worth a failure: the next one may land
                log.debug("progress_not_recorded", task_id=ref.task_id, error=str(exc))
                return
            self.writes += 1
            if kept:
                self.observer.task_changed(task)
        finally:
            self._scheduled.pop(ref, None)
            if ref in self._latest:  # reported again while writing
                latest_task, latest_entry = self._latest.pop(ref)
                self._report(latest_task, ref, latest_entry)

    def forget(self, ref: RunRef) -> None:
        """The run ended: drop what it has not written (its end says more)."""
        self._live.discard(ref)
        self._latest.pop(ref, None)
        self._last_write.pop(ref, None)
        self._sequence.pop(ref, None)
        scheduled = self._scheduled.pop(ref, None)
        if isinstance(scheduled, asyncio.TimerHandle):
            scheduled.cancel()
