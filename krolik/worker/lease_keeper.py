"""The lease keeper: a worker's heartbeat, from a thread of its own.

A handler that blocks the worker's event loop (CPU work or a blocking call inside an
``async def``) would stop a heartbeat running on that loop; past the lease another
worker would run the task a second time. The keeper extends the leases from a thread
with its own event loop and its own store connection (``TaskStore.sibling``), so a
lease lives as long as the worker process does, whatever its loop is doing.

It also watches that loop: the loop bumps a pulse every ``PULSE_SECONDS``, and when
the pulse stops for longer than ``blocked_loop_warn_seconds`` the keeper logs a
warning (with the runs that were on the loop) and reports the length of the stall.

While the loop is stalled, a beat keeps every lease the worker holds in the store, not
only the runs registered with the keeper: a claim committed just before the stall has
its answer waiting for the loop, so its run is not registered yet.

A run tracked with a deadline (its timeout) is kept only until ``deadline +
lease_seconds``: a handler stuck past its timeout without ever yielding to the loop
cannot be stopped from here, so its lease is let go, and the rescuer counts the
attempt and schedules the next one, as it does for a worker that died.

Reports go back to the worker's loop with ``call_soon_threadsafe``: which runs lost
their lease, which were asked to stop, and how long no heartbeat got through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from krolik.events import Observer
from krolik.log import get_logger
from krolik.store.base import TaskStore
from krolik.store.records import RunRef, WorkerInfo

log = get_logger(__name__)

PULSE_SECONDS = 0.1
WATCH_SECONDS = 0.1
"""How often the keeper's thread looks at the pulse (and whether a beat is due)."""
STALLED_SECONDS = 0.5
"""The loop has not run for this long: a beat keeps every lease of the worker, not only
those of the runs registered (well below any lease, above a loop's normal delays)."""


@dataclass(frozen=True, slots=True)
class BeatReport:
    """What one heartbeat found, for the worker's loop to act on."""

    sent: tuple[RunRef, ...]
    kept: dict[RunRef, bool] = field(default_factory=dict)
    """Runs whose lease was extended, with whether a cancel was requested."""
    let_go: tuple[RunRef, ...] = ()
    """Runs past their deadline, no longer extended (see the module docstring)."""
    error: str | None = None
    """Why the heartbeat failed, if it did."""
    silent_seconds: float = 0.0
    """Time since the last heartbeat that got through."""

    def lost(self) -> list[RunRef]:
        """Runs sent that the store no longer lets this worker keep."""
        if self.error is not None:
            return []
        return [ref for ref in self.sent if ref not in self.kept]


class LeaseKeeper:
    def __init__(
        self,
        store: TaskStore,
        *,
        worker_id: str,
        lease_seconds: float,
        interval_seconds: float,
        blocked_warn_seconds: float,
        on_report: Callable[[BeatReport], None],
        registration: Callable[[], WorkerInfo] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._source = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = interval_seconds
        self.blocked_warn_seconds = blocked_warn_seconds
        self._on_report = on_report
        self._registration = registration
        self.observer = observer or Observer()
        self._runs: dict[RunRef, float | None] = {}
        """Tracked runs -> monotonic time until which they are kept (None: always)."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._beat_now = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pulse_handle: asyncio.TimerHandle | None = None
        self._pulse = time.monotonic()
        self._last_success = time.monotonic()
        self.beats = 0
        """Heartbeats that got through (tests and the probe)."""
        self.blocked = 0
        """Stalls of the worker's loop seen (tests)."""

    # -- the worker's side ---------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._pulse = self._last_success = time.monotonic()
        self._bump_pulse()
        self._thread = threading.Thread(
            target=self._thread_main, name=f"krolik-lease-keeper-{self.worker_id}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop beating (the runs are over or given up by then) and close the connection."""
        if self._pulse_handle is not None:
            self._pulse_handle.cancel()
            self._pulse_handle = None
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._beat_now.set()
        await asyncio.to_thread(thread.join, 10)

    def track(self, ref: RunRef, timeout_seconds: float | None) -> None:
        until = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        with self._lock:
            self._runs[ref] = None if until is None else until + self.lease_seconds

    def untrack(self, ref: RunRef) -> None:
        with self._lock:
            self._runs.pop(ref, None)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._runs)

    def beat_soon(self) -> None:
        """Beat at the next look instead of waiting for the interval (tests)."""
        self._beat_now.set()

    def _bump_pulse(self) -> None:
        self._pulse = time.monotonic()
        assert self._loop is not None
        self._pulse_handle = self._loop.call_later(PULSE_SECONDS, self._bump_pulse)

    # -- the keeper's thread ---------------------------------------------------------
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            log.exception("lease_keeper_crashed", worker_id=self.worker_id)
        finally:
            loop.close()

    async def _serve(self) -> None:
        store = self._source.sibling()
        stalled_since: float | None = None
        next_beat = time.monotonic()
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                stalled_since = self._watch_loop(now, stalled_since)
                if now >= next_beat or self._beat_now.is_set():
                    self._beat_now.clear()
                    await self._beat(store)
                    next_beat = time.monotonic() + self.interval
                await asyncio.sleep(WATCH_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await store.close()

    def _watch_loop(self, now: float, stalled_since: float | None) -> float | None:
        """Warn once per stall of the worker's loop, and report its length when it ends."""
        behind = now - self._pulse - PULSE_SECONDS
        if behind > self.blocked_warn_seconds:
            if stalled_since is None:
                stalled_since = self._pulse
                self.blocked += 1
                with self._lock:
                    task_ids = sorted({ref.task_id for ref in self._runs})
                log.warning(
                    "event_loop_blocked",
                    worker_id=self.worker_id,
                    blocked_seconds=round(behind, 3),
                    running_task_ids=task_ids,
                    hint="a handler blocks the event loop: make it a plain function "
                    "(it then runs in a thread) or await its slow calls",
                )
            return stalled_since
        if stalled_since is not None:
            self.observer.event_loop_blocked(max(self._pulse - stalled_since, behind))
        return None

    async def _beat(self, store: TaskStore) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._runs.items())
        let_go = tuple(ref for ref, until in items if until is not None and now > until)
        sent = tuple(ref for ref, until in items if until is None or now <= until)
        try:
            # A stalled loop may hold claims it has not registered yet (their answers wait
            # for it): every lease of this worker is kept until it runs again.
            stalled = time.monotonic() - self._pulse > STALLED_SECONDS
            kept = (
                await store.heartbeat(
                    sent, self.lease_seconds, worker_id=self.worker_id if stalled else None
                )
                if sent or stalled
                else {}
            )
            seen = await store.touch_worker(self.worker_id, len(sent), self.lease_seconds)
            if not seen and self._registration is not None:
                # Pruned while it could not beat (a long database outage): register again.
                await store.register_worker(self._registration())
                log.info("worker_registered_again", worker_id=self.worker_id)
        except Exception as exc:
            self._report(
                BeatReport(
                    sent,
                    let_go=let_go,
                    error=f"{type(exc).__name__}: {exc}",
                    silent_seconds=time.monotonic() - self._last_success,
                )
            )
            return
        self._last_success = time.monotonic()
        self.beats += 1
        for ref in let_go:
            self.untrack(ref)
        self._report(BeatReport(sent, kept=kept, let_go=let_go))

    def _report(self, report: BeatReport) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the worker's loop is shutting down
            loop.call_soon_threadsafe(self._on_report, report)
