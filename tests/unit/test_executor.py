from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from krolik.registry import Handler, Registry, TaskContext
from krolik.states import TaskStatus
from krolik.store.records import RunRef, Task
from krolik.worker.executor import Outcome, OutcomeKind, Run, StopReason, execute

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def make_task(payload: Any = None, **changes: Any) -> Task:
    values: dict[str, Any] = dict.fromkeys((f.name for f in dataclasses.fields(Task)), None)
    values.update(
        id=11,
        name="t",
        queue="default",
        payload=payload,
        status=TaskStatus.PROCESSING,
        attempts=2,
        max_attempts=3,
        worker_id="w-1",
        cancel_requested=False,
        run_token=2,
        run_at=NOW,
        lease_expires_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        started_at=NOW,
    )
    values.update(changes)
    return Task(**values)


def make_run(func: Any, payload: Any = None, timeout: float | None = None, **task: Any) -> Run:
    handler = Registry().add(func, name="t")
    return Run(
        task=make_task(payload, **task),
        ref=RunRef(task_id=11, token=2, attempt=2, worker_id="w-1"),
        handler=handler,
        timeout_seconds=timeout,
    )


async def test_success():
    async def handler(payload):
        return {"got": payload}

    outcome = await execute(make_run(handler, payload=[1, 2]))
    assert outcome == Outcome(OutcomeKind.SUCCEEDED, result={"got": [1, 2]})


async def test_sync_handler_success():
    def handler(payload):
        return payload + 1

    assert await execute(make_run(handler, payload=1)) == Outcome(OutcomeKind.SUCCEEDED, result=2)


async def test_context_describes_the_run():
    seen: list[TaskContext] = []

    async def handler(payload, context):
        seen.append(context)

    outcome = await execute(make_run(handler, max_attempts=None))
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.result is None
    assert seen == [
        TaskContext(
            task_id=11, name="t", queue="default", attempt=2, max_attempts=1, worker_id="w-1"
        )
    ]


@pytest.mark.parametrize("sync", [False, True])
async def test_exception_gives_error_and_traceback(sync):
    def boom_sync(payload):
        raise ValueError("bad input")

    async def boom(payload):
        raise ValueError("bad input")

    outcome = await execute(make_run(boom_sync if sync else boom))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "ValueError: bad input"
    assert outcome.traceback is not None
    assert "Traceback" in outcome.traceback
    assert "bad input" in outcome.traceback
    assert "boom" in outcome.traceback
    assert outcome.stop_reason is None
    assert outcome.result is None


async def test_timeout():
    cancelled = asyncio.Event()

    async def slow(payload):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await execute(make_run(slow, timeout=0.05))
    assert loop.time() - started < 2
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "TimeoutError: the handler ran longer than 0.05s"
    assert outcome.stop_reason is None
    assert cancelled.is_set()  # the handler was cancelled and awaited, not left running


async def test_a_handler_blocking_the_loop_past_its_timeout_times_out():
    """No await in it: the timeout's timer never got to fire, the run still timed out."""

    async def blocking(payload):
        time.sleep(0.15)  # the mistake: a blocking call in an async handler
        return "late"

    outcome = await execute(make_run(blocking, timeout=0.05))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.result is None
    assert outcome.error == "TimeoutError: the handler ran longer than 0.05s"


async def test_handler_raising_timeout_error_itself_is_a_failure():
    async def handler(payload):
        raise TimeoutError("upstream timed out")

    outcome = await execute(make_run(handler, timeout=5))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "TimeoutError: upstream timed out"


@pytest.mark.parametrize("result", [object(), {1, 2}, {"k": b"bytes"}, 2**70])
async def test_json_unserialisable_result_fails(result):
    async def handler(payload):
        return result

    outcome = await execute(make_run(handler))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert outcome.error.startswith("the result is not JSON")
    assert outcome.result is None


@pytest.mark.parametrize("result", ["a\x00b", {"k": ["\x00"]}, {"ke\x00y": 1}, ("x", "\x00")])
async def test_result_with_nul_fails_instead_of_breaking_the_store(result):
    """PostgreSQL's jsonb rejects \\u0000: such a result would make complete() raise."""

    async def handler(payload):
        return result

    outcome = await execute(make_run(handler))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert "NUL" in outcome.error


async def test_result_with_escaped_backslash_u0000_text_is_fine():
    async def handler(payload):
        return {"text": "\\u0000 is how JSON writes NUL"}

    outcome = await execute(make_run(handler))
    assert outcome.kind is OutcomeKind.SUCCEEDED


async def test_nul_in_error_and_traceback_is_escaped():
    """PostgreSQL text cannot hold NUL: fail() would raise on the raw message."""

    async def handler(payload):
        raise ValueError("bad\x00byte")

    outcome = await execute(make_run(handler))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "ValueError: bad\\x00byte"
    assert outcome.traceback is not None
    assert "\x00" not in outcome.traceback
    assert "bad\\x00byte" in outcome.traceback


async def test_stop_before_start():
    ran = False

    async def handler(payload):
        nonlocal ran
        ran = True

    run = make_run(handler)
    run.stop(StopReason.SHUTDOWN)
    outcome = await execute(run)
    assert outcome == Outcome(OutcomeKind.STOPPED, stop_reason=StopReason.SHUTDOWN)
    assert not ran


@pytest.mark.parametrize("reason", list(StopReason))
async def test_stop_during_run(reason):
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(payload):
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = make_run(handler, timeout=5)
    running = asyncio.create_task(execute(run))
    await asyncio.wait_for(started.wait(), 2)
    run.stop(reason)
    run.stop(StopReason.SHUTDOWN)  # the first reason wins
    outcome = await asyncio.wait_for(running, 2)
    assert outcome == Outcome(OutcomeKind.STOPPED, stop_reason=reason)
    assert cancelled.is_set()


async def test_stop_while_the_handler_turns_cancellation_into_an_error():
    started = asyncio.Event()

    async def handler(payload):
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    run = make_run(handler)
    running = asyncio.create_task(execute(run))
    await asyncio.wait_for(started.wait(), 2)
    run.stop(StopReason.CANCEL_REQUESTED)
    outcome = await asyncio.wait_for(running, 2)
    assert outcome == Outcome(OutcomeKind.STOPPED, stop_reason=StopReason.CANCEL_REQUESTED)


async def test_a_stop_landing_after_the_handler_returned_does_not_cancel_the_caller():
    """The stop comes on the loop pass after the handler returned: the run succeeded, and
    the task that ran it (which goes on to record the outcome) is not cancelled."""
    run: Run

    async def handler(payload):
        asyncio.get_running_loop().call_soon(run.stop, StopReason.CANCEL_REQUESTED)
        return "finished"

    run = make_run(handler)
    outcome = await execute(run)
    await asyncio.sleep(0)  # a loop pass: the stop lands now
    await asyncio.sleep(0)  # and this await would raise if it had cancelled us
    assert run.stop_reason is StopReason.CANCEL_REQUESTED  # the stop did land
    assert outcome == Outcome(OutcomeKind.SUCCEEDED, result="finished")
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


async def test_a_stop_during_the_handler_leaves_the_caller_uncancelled():
    started = asyncio.Event()

    async def handler(payload):
        started.set()
        await asyncio.sleep(10)

    async def run_then_go_on(run: Run) -> tuple[Outcome, int]:
        outcome = await execute(run)
        await asyncio.sleep(0.01)  # recording the outcome must not be cancelled
        current = asyncio.current_task()
        assert current is not None
        return outcome, current.cancelling()

    run = make_run(handler, timeout=5)
    running = asyncio.create_task(run_then_go_on(run))
    await asyncio.wait_for(started.wait(), 2)
    run.stop(StopReason.LEASE_LOST)
    run.stop(StopReason.LEASE_LOST)  # a second stop sends no second cancellation
    outcome, cancelling = await asyncio.wait_for(running, 2)
    assert outcome == Outcome(OutcomeKind.STOPPED, stop_reason=StopReason.LEASE_LOST)
    assert cancelling == 0


async def test_a_handler_swallowing_the_timeout_still_times_out():
    async def handler(payload):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "pretends it finished"

    outcome = await execute(make_run(handler, timeout=0.05))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "TimeoutError: the handler ran longer than 0.05s"


async def test_stop_after_execute_returned_changes_nothing():
    async def handler(payload):
        return 1

    run = make_run(handler)
    outcome = await execute(run)
    run.stop(StopReason.LEASE_LOST)
    assert outcome == Outcome(OutcomeKind.SUCCEEDED, result=1)


async def test_cancelling_execute_cancels_the_handler():
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(payload):
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = make_run(handler)
    running = asyncio.create_task(execute(run))
    await asyncio.wait_for(started.wait(), 2)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.wait_for(cancelled.wait(), 2)


def test_handler_type_used():
    assert isinstance(make_run(lambda payload: payload).handler, Handler)
