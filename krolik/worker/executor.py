"""One run of one handler, with its timeout; decides nothing about storage."""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from krolik.registry import Handler, TaskContext
from krolik.store.base import RunRef, Task


class StopReason(StrEnum):
    CANCEL_REQUESTED = "cancel_requested"
    LEASE_LOST = "lease_lost"
    SHUTDOWN = "shutdown"


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(slots=True)
class Outcome:
    kind: OutcomeKind
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    stop_reason: StopReason | None = None


@dataclass(slots=True)
class Run:
    """A claimed task this worker is running."""

    task: Task
    ref: RunRef
    handler: Handler
    timeout_seconds: float | None
    stop_reason: StopReason | None = None
    handler_task: asyncio.Task[Any] | None = field(default=None, repr=False)

    def stop(self, reason: StopReason) -> None:
        """Ask the handler to stop; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.handler_task is not None:
            self.handler_task.cancel()


async def execute(run: Run) -> Outcome:
    """Run the handler of ``run`` to an outcome; never raises for the handler's faults."""
    context = TaskContext(
        task_id=run.task.id,
        name=run.task.name,
        queue=run.task.queue,
        attempt=run.ref.attempt,
        max_attempts=run.task.max_attempts or 1,
        worker_id=run.ref.worker_id,
    )
    handler_task = asyncio.create_task(run.handler.run(run.task.payload, context))
    run.handler_task = handler_task
    if run.stop_reason is not None:  # stopped before it even started
        handler_task.cancel()
    try:
        done, _ = await asyncio.wait({handler_task}, timeout=run.timeout_seconds)
    except asyncio.CancelledError:
        handler_task.cancel()
        raise
    if not done:
        handler_task.cancel()
        with contextlib.suppress(BaseException):
            await handler_task
        if run.stop_reason is None:
            return Outcome(
                OutcomeKind.FAILED,
                error=f"TimeoutError: the handler ran longer than {run.timeout_seconds:g}s",
            )
    if handler_task.cancelled() or (
        run.stop_reason is not None and handler_task.exception() is not None
    ):
        return Outcome(OutcomeKind.STOPPED, stop_reason=run.stop_reason or StopReason.SHUTDOWN)
    exc = handler_task.exception()
    if exc is not None:
        return Outcome(
            OutcomeKind.FAILED,
            error=_storable(f"{type(exc).__name__}: {exc}"),
            traceback=_storable("".join(traceback.format_exception(exc))),
        )
    result = handler_task.result()
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
