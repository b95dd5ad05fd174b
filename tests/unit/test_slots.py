"""The worker's run slots: a packed message takes as many free slots as it can use at
once, a waiter waits for at least one, and no slot or wake-up is ever lost.

No timing: a waiter that should still be waiting is checked after a few loop passes
(``asyncio.sleep(0)``), which is all a woken waiter needs to run.
"""

from __future__ import annotations

import asyncio
import random

from krolik.worker.slots import Slots


async def passes(count: int = 5) -> None:
    """Let every task that is ready run (a woken waiter needs one pass or two)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def waiter(slots: Slots, most: int = 1) -> asyncio.Task[int]:
    """A task blocked in ``take(most)``, queued behind the waiters made before it."""
    task = asyncio.create_task(slots.take(most))
    await passes()
    assert not task.done(), "the waiter should be waiting for a slot"
    return task


async def test_take_returns_at_once_while_slots_are_free() -> None:
    slots = Slots(4)
    assert await slots.take(1) == 1
    assert slots.free == 3
    assert await slots.take(2) == 2
    assert slots.free == 1


async def test_take_takes_only_what_is_free() -> None:
    """A packed message of five tasks on a worker with three free slots claims three."""
    slots = Slots(3)
    assert await slots.take(5) == 3
    assert slots.free == 0


async def test_take_takes_at_least_one_slot() -> None:
    slots = Slots(2)
    assert await slots.take(0) == 1
    assert slots.free == 1


async def test_give_returns_slots_for_the_next_take() -> None:
    slots = Slots(3)
    assert await slots.take(3) == 3
    slots.give(2)
    assert slots.free == 2
    assert await slots.take(10) == 2


async def test_a_give_of_nothing_changes_nothing() -> None:
    slots = Slots(2)
    await slots.take(2)
    blocked = await waiter(slots)
    slots.give(0)
    await passes()
    assert (slots.free, blocked.done()) == (0, False)
    slots.give(1)
    assert await asyncio.wait_for(blocked, 1) == 1


async def test_take_waits_while_no_slot_is_free() -> None:
    slots = Slots(1)
    await slots.take(1)
    blocked = await waiter(slots, most=3)
    slots.give(1)
    assert await asyncio.wait_for(blocked, 1) == 1  # only one came free
    assert slots.free == 0


async def test_a_woken_waiter_takes_every_free_slot_it_can_use() -> None:
    slots = Slots(4)
    await slots.take(4)
    blocked = await waiter(slots, most=3)
    slots.give(4)
    assert await asyncio.wait_for(blocked, 1) == 3
    assert slots.free == 1


async def test_waiters_are_served_in_the_order_they_came() -> None:
    slots = Slots(1)
    await slots.take(1)
    served: list[str] = []

    async def wait_as(name: str) -> None:
        await slots.take(1)
        served.append(name)

    waiting = []
    for name in "ABC":
        waiting.append(asyncio.create_task(wait_as(name)))
        await passes()
    for expected in (["A"], ["A", "B"], ["A", "B", "C"]):
        slots.give(1)
        await passes()
        assert served == expected
        assert slots.free == 0
    await asyncio.gather(*waiting)


async def test_a_give_of_several_slots_wakes_as_many_waiters() -> None:
    slots = Slots(3)
    await slots.take(3)
    first, second, third = [await waiter(slots) for _ in range(3)]
    slots.give(2)
    assert await asyncio.wait_for(first, 1) == 1
    assert await asyncio.wait_for(second, 1) == 1
    await passes()
    assert not third.done()
    assert slots.free == 0
    third.cancel()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = Slots(1)
    await slots.take(1)
    gone = await waiter(slots)
    kept = await waiter(slots)
    gone.cancel()
    await passes()
    assert gone.cancelled()
    slots.give(1)
    assert await asyncio.wait_for(kept, 1) == 1
    assert slots.free == 0


async def test_a_waiter_cancelled_after_it_was_woken_passes_the_wake_up_on() -> None:
    """Woken by a give, cancelled before it ran: the next waiter gets the slot, or the
    slot would sit free while a delivery waits for it."""
    slots = Slots(1)
    await slots.take(1)
    woken = await waiter(slots)
    next_in_line = await waiter(slots)
    slots.give(1)  # wakes ``woken``, which has not run yet...
    woken.cancel()  # ...and is cancelled before it does
    assert await asyncio.wait_for(next_in_line, 1) == 1
    assert woken.cancelled()
    assert slots.free == 0
    slots.give(1)
    assert slots.free == 1  # no slot lost, none made up


async def test_a_cancelled_woken_waiter_with_nobody_behind_it_leaves_the_slot_free() -> None:
    slots = Slots(1)
    await slots.take(1)
    woken = await waiter(slots)
    slots.give(1)
    woken.cancel()
    await passes()
    assert woken.cancelled()
    assert slots.free == 1
    assert await slots.take(1) == 1


async def test_a_give_right_after_a_cancel_wakes_the_next_waiter() -> None:
    """The other order: cancelled first, then a slot given back in the same loop pass
    (a consumer callback cancelled on stop while a run ends)."""
    slots = Slots(1)
    await slots.take(1)
    cancelled = await waiter(slots)
    next_in_line = await waiter(slots)
    cancelled.cancel()
    slots.give(1)
    try:
        assert await asyncio.wait_for(next_in_line, 1) == 1
        assert slots.free == 0
        await passes()
        assert cancelled.cancelled()
    finally:
        next_in_line.cancel()
        await asyncio.gather(cancelled, next_in_line, return_exceptions=True)


async def test_waiters_keep_their_order_when_slots_come_back_in_one_pass() -> None:
    slots = Slots(2)
    await slots.take(2)
    served: list[str] = []

    async def wait_as(name: str) -> None:
        await slots.take(1)
        served.append(name)

    waiting = []
    for name in "ABCD":
        waiting.append(asyncio.create_task(wait_as(name)))
        await passes()
    slots.give(1)
    slots.give(1)
    await passes()
    assert served == ["A", "B"]
    slots.give(1)
    await passes()
    try:
        assert served == ["A", "B", "C"]  # C came before D
    finally:
        slots.give(1)
        await asyncio.wait_for(asyncio.gather(*waiting), 1)


async def test_free_is_never_negative_and_slots_add_up_under_churn() -> None:
    """Many holders taking and giving at random: never more held than the size, never
    a negative count, every slot back at the end."""
    size = 3
    slots = Slots(size)
    rng = random.Random(20240611)
    held = 0
    most_held = 0

    async def holder(rounds: int) -> None:
        nonlocal held, most_held
        for _ in range(rounds):
            taken = await slots.take(rng.randint(1, 4))
            assert 1 <= taken <= size
            held += taken
            most_held = max(most_held, held)
            assert slots.free >= 0
            assert slots.free + held == size
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            held -= taken
            slots.give(taken)
            assert slots.free + held == size

    holders = [asyncio.create_task(holder(30)) for _ in range(8)]
    await asyncio.wait_for(asyncio.gather(*holders), 10)
    assert slots.free == size
    assert most_held == size  # they did compete for the slots


async def test_cancelling_waiters_at_random_loses_no_slot() -> None:
    """Holders cancelled while waiting or holding, as consumer callbacks are on stop()."""
    size = 2
    slots = Slots(size)
    rng = random.Random(7)
    held = 0
    cancelled = 0

    async def holder() -> None:
        nonlocal held
        taken = await slots.take(rng.randint(1, 3))
        held += taken
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            held -= taken
            slots.give(taken)

    for _ in range(40):
        batch = [asyncio.create_task(holder()) for _ in range(6)]
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
            victim = rng.choice(batch)
            victim.cancel()
        outcomes = await asyncio.wait_for(asyncio.gather(*batch, return_exceptions=True), 5)
        assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        cancelled += sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
        assert held == 0
        assert slots.free == size
    assert cancelled > 10  # the cancellations did land, many of them on waiters
