"""MicroBatcher: concurrent callers share one call of the operation; ``submit_many``
puts a caller's items in one batch (a packed message's tasks claimed in one statement).

"Exception was never retrieved" is not a Python warning but a report to the event
loop's exception handler when a failed future is collected, so the tests that fail
items install a handler of their own and collect garbage before looking.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from krolik.batching import MicroBatcher
from krolik.errors import StoreConflict, StoreError, StoreUnavailable


class Recorder:
    """An operation that records its batches; ``gate`` holds a batch in flight."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail_with: Callable[[], Exception] | None = None
        """Makes the error to raise: a fresh one each time, so that no test holds on
        to a traceback (and through it to the futures the check wants collected)."""
        self.bad: set[int] = set()

    async def __call__(self, items: Sequence[int]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with()
        if self.bad & set(items):
            raise ValueError(f"cannot take {sorted(self.bad & set(items))}")
        return [f"r{item}" for item in items]


@asynccontextmanager
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the running loop's exception handler is told while inside."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        yield seen
    finally:
        for _ in range(5):  # callbacks still queued hold on to the futures
            await asyncio.sleep(0)
        gc.collect()  # a failed future nobody looked at reports itself when collected
        loop.set_exception_handler(previous)


async def outcome(call: Awaitable[Any]) -> str:
    """The result, or the error's type and text: no traceback outlives the call."""
    try:
        return repr(await call)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


async def test_submit_many_returns_each_items_result_in_order() -> None:
    operation = Recorder()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    assert await batcher.submit_many([3, 1, 2]) == ["r3", "r1", "r2"]
    assert operation.batches == [[3, 1, 2]]
    assert batcher.batches == 1


async def test_submit_many_of_nothing_returns_nothing() -> None:
    operation = Recorder()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    assert await batcher.submit_many([]) == []
    await asyncio.sleep(0)
    assert operation.batches == []


async def test_submit_many_items_share_the_next_batch_with_other_callers() -> None:
    """While a batch is in flight, what arrives waits and goes together in the next one."""
    operation = Recorder()
    operation.gate = asyncio.Event()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.wait_for(operation.entered.wait(), 1)
    many = asyncio.create_task(batcher.submit_many([2, 3, 4]))
    single = asyncio.create_task(batcher.submit(5))
    await asyncio.sleep(0)
    operation.gate.set()
    assert await asyncio.wait_for(many, 1) == ["r2", "r3", "r4"]
    assert await asyncio.wait_for(first, 1) == "r1"
    assert await asyncio.wait_for(single, 1) == "r5"
    assert operation.batches == [[1], [2, 3, 4, 5]]


async def test_by_default_one_batch_is_in_flight_and_the_next_gathers_the_rest() -> None:
    operation = Recorder()
    operation.gate = asyncio.Event()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.wait_for(operation.entered.wait(), 1)
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(1, 20)]
    await asyncio.sleep(0)
    assert operation.batches == [[0]]  # the others wait for the one in flight
    operation.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 1) == [f"r{n}" for n in range(20)]
    assert operation.batches == [[0], list(range(1, 20))]


async def test_submit_many_is_cut_at_the_largest_batch() -> None:
    operation = Recorder()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation, max_batch=2, max_in_flight=1)
    assert await batcher.submit_many([1, 2, 3, 4, 5]) == ["r1", "r2", "r3", "r4", "r5"]
    assert operation.batches == [[1, 2], [3, 4], [5]]


async def test_a_submit_many_group_is_never_split_across_batches() -> None:
    """A packed message's claims succeed or fail together: the group waits for the next
    batch rather than straddling two."""
    operation = Recorder()
    operation.gate = asyncio.Event()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation, max_batch=4, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.wait_for(operation.entered.wait(), 1)
    two = asyncio.create_task(batcher.submit_many([2, 3]))
    three = asyncio.create_task(batcher.submit_many([4, 5, 6]))
    last = asyncio.create_task(batcher.submit(7))
    await asyncio.sleep(0)
    operation.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, two, three, last), 1) == [
        "r1",
        ["r2", "r3"],
        ["r4", "r5", "r6"],
        "r7",
    ]
    assert operation.batches == [[1], [2, 3], [4, 5, 6, 7]]


async def test_submit_many_of_nothing_returns_at_once() -> None:
    operation = Recorder()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    assert await batcher.submit_many([]) == []
    assert operation.batches == []


async def test_a_conflict_runs_the_batch_again_whole() -> None:
    """A deadlock or a lock timeout wrote nothing: the same batch goes again, not split."""
    batches: list[list[int]] = []
    failures = [StoreConflict("deadlock"), StoreConflict("lock timeout")]

    async def operation(items: Sequence[int]) -> list[str]:
        batches.append(list(items))
        if failures:
            raise failures.pop(0)
        return [f"r{item}" for item in items]

    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    assert await asyncio.wait_for(batcher.submit_many([1, 2, 3]), 2) == ["r1", "r2", "r3"]
    assert batches == [[1, 2, 3]] * 3


async def test_a_conflict_that_persists_fails_the_batch_whole() -> None:
    operation = Recorder()
    operation.fail_with = lambda: StoreConflict("deadlock")
    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    async with loop_errors() as reported:
        assert await outcome(batcher.submit_many([1, 2])) == "StoreConflict: deadlock"
        assert operation.batches == [[1, 2]] * 3, "three tries, never one item at a time"
        await asyncio.sleep(0)
    assert reported == []


@pytest.mark.parametrize("error", [StoreError, StoreUnavailable])
async def test_a_store_error_fails_every_item_without_unretrieved_exceptions(
    error: type[StoreError],
) -> None:
    operation = Recorder()
    operation.fail_with = lambda: error("gone")
    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    async with loop_errors() as reported:
        assert await outcome(batcher.submit_many([1, 2, 3])) == f"{error.__name__}: gone"
        assert operation.batches == [[1, 2, 3]]  # one try, not one per item
        await asyncio.sleep(0)
    assert reported == []


async def test_a_store_error_in_a_shared_batch_fails_every_caller() -> None:
    operation = Recorder()
    operation.gate = asyncio.Event()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation, max_in_flight=1)
    async with loop_errors() as reported:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.wait_for(operation.entered.wait(), 1)
        many = asyncio.create_task(batcher.submit_many([2, 3]))
        single = asyncio.create_task(batcher.submit(4))
        await asyncio.sleep(0)
        operation.fail_with = lambda: StoreError("gone")
        operation.gate.set()
        outcomes = [await outcome(task) for task in (first, many, single)]
        del first, many, single
    assert outcomes == ["StoreError: gone"] * 3
    assert operation.batches == [[1], [2, 3, 4]]
    assert reported == []


async def test_another_error_fails_only_the_item_that_caused_it() -> None:
    """The batch is retried one item at a time; submit_many raises the failed item's error
    (its other results are not reported) and nothing is left unretrieved."""
    operation = Recorder()
    operation.bad = {2}
    batcher: MicroBatcher[int, str] = MicroBatcher(operation)
    async with loop_errors() as reported:
        assert await outcome(batcher.submit_many([1, 2, 3])) == "ValueError: cannot take [2]"
        assert operation.batches == [[1, 2, 3], [1], [2], [3]]
        assert await batcher.submit(3) == "r3"
    assert reported == []


async def test_a_cancelled_submit_many_does_not_break_the_batch() -> None:
    """The caller is gone; the batch still runs and the other callers get their results."""
    operation = Recorder()
    operation.gate = asyncio.Event()
    batcher: MicroBatcher[int, str] = MicroBatcher(operation, max_in_flight=1)
    async with loop_errors() as reported:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.wait_for(operation.entered.wait(), 1)
        many = asyncio.create_task(batcher.submit_many([2, 3]))
        other = asyncio.create_task(batcher.submit(4))
        await asyncio.sleep(0)
        many.cancel()
        operation.gate.set()
        assert await asyncio.wait_for(first, 1) == "r1"
        assert await asyncio.wait_for(other, 1) == "r4"
        with pytest.raises(asyncio.CancelledError):
            await many
    assert operation.batches == [[1], [2, 3, 4]]
    assert reported == []
