"""One run of one handler, with its timeout; decides nothing about storage."""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from krolik.handler_types import PayloadRejected
from krolik.registry import Handler, ProgressSink, TaskContext
from krolik.snooze import Snooze
from krolik.store.records import RunRef, Task


class StopReason(StrEnum):
    CANCEL_REQUESTED = "cancel_requested"
    LEASE_LOST = "lease_lost"
    SHUTDOWN = "shutdown"


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    SNOOZED = "snoozed"
    """The handler raised or returned ``Snooze``: run again later, attempt not counted."""


@dataclass(slots=True)
class Outcome:
    kind: OutcomeKind
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    stop_reason: StopReason | None = None
    snooze_seconds: float = 0.0
    permanent: bool = False
    """A failure no retry can mend (a payload the handler's type refuses): failed at once."""


@dataclass(slots=True)
class Run:
    """A claimed task this worker is running."""

    task: Task
    ref: RunRef
    handler: Handler
    timeout_seconds: float | None
    stop_reason: StopReason | None = None
    handler_task: asyncio.Task[Any] | None = field(default=None, repr=False)
    """The asyncio task running the handler while it runs (the one ``execute`` runs in)."""
    cancel_sent: bool = field(default=False, repr=False)
    handler_done: bool = field(default=False, repr=False)
    """The handler returned (or never will run): only the outcome is left to write."""
    progress_sink: ProgressSink | None = field(default=None, repr=False)
    """Where ``context.progress`` reports go (the worker's ``ProgressWriter``)."""

    def stop(self, reason: StopReason) -> None:
        """Ask the handler to stop; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.handler_task is not None and not self.cancel_sent:
            self.cancel_sent = True
            self.handler_task.cancel()


async def execute(run: Run) -> Outcome:
    """Run the handler of ``run`` to an outcome; never raises for the handler's faults.

    The handler runs in the caller's own asyncio task (no task and no waiter of its
    own per run): ``Run.stop`` cancels that task while the handler runs, and the
    cancellation is taken back here once it has been turned into an outcome.
    """
    if run.stop_reason is not None:  # stopped before it even started
        return Outcome(OutcomeKind.STOPPED, stop_reason=run.stop_reason)
    context = TaskContext(
        task_id=run.task.id,
        name=run.task.name,
        queue=run.task.queue,
        attempt=run.ref.attempt,
        max_attempts=run.task.max_attempts or 1,
        worker_id=run.ref.worker_id,
        progress_sink=run.progress_sink,
    )
    current = asyncio.current_task()
    assert current is not None
    deadline = asyncio.timeout(run.timeout_seconds) if run.timeout_seconds else None
    run.handler_task = current
    started = time.monotonic()
    try:
        if deadline is None:
            result = await run.handler.run(run.task.payload, context)
        else:
            async with deadline:
                result = await run.handler.run(run.task.payload, context)
    except asyncio.CancelledError:
        if not run.cancel_sent:
            raise  # cancelled from outside: not ours to turn into an outcome
        return Outcome(OutcomeKind.STOPPED, stop_reason=run.stop_reason or StopReason.SHUTDOWN)
    except Snooze as snooze:
        if run.stop_reason is not None:
            return Outcome(OutcomeKind.STOPPED, stop_reason=run.stop_reason)
        return Outcome(OutcomeKind.SNOOZED, snooze_seconds=snooze.seconds)
    except PayloadRejected as exc:
        return Outcome(OutcomeKind.FAILED, error=_storable(str(exc)), permanent=True)
    except Exception as exc:
        if run.stop_reason is not None:  # the handler turned the stop into an error
            return Outcome(OutcomeKind.STOPPED, stop_reason=run.stop_reason)
        if deadline is not None and deadline.expired():
            return _timed_out(run)
        return Outcome(
            OutcomeKind.FAILED,
            error=_storable(f"{type(exc).__name__}: {exc}"),
            traceback=_storable("".join(traceback.format_exception(exc))),
        )
    finally:
        run.handler_task = None
        run.handler_done = True
        if run.cancel_sent:
            current.uncancel()
    if deadline is not None and deadline.expired():  # the handler swallowed its cancellation
        return _timed_out(run)
    if run.timeout_seconds and time.monotonic() - started > run.timeout_seconds:
        # It blocked the event loop past its timeout, so the timer never got to fire:
        # the timeout holds all the same.
        return _timed_out(run)
    if isinstance(result, Snooze):
        return Outcome(OutcomeKind.SNOOZED, snooze_seconds=result.seconds)
    try:
        orjson.dumps(result)
    except TypeError as err:
        return Outcome(OutcomeKind.FAILED, error=f"the result is not JSON: {err}")
    if _has_nul(result):
        return Outcome(
            OutcomeKind.FAILED,
            error="the result cannot be stored: NUL characters (\\u0000) are not allowed",
        )
    return Outcome(OutcomeKind.SUCCEEDED, result=result)


def _timed_out(run: Run) -> Outcome:
    return Outcome(
        OutcomeKind.FAILED,
        error=f"TimeoutError: the handler ran longer than {run.timeout_seconds:g}s",
    )


def _storable(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters; show them escaped instead."""
    return text.replace("\x00", "\\x00")


def _has_nul(value: Any) -> bool:
    """Whether a JSON value (already known to serialise) holds a NUL in a string or key."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False
