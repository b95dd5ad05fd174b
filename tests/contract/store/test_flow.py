"""Flow control in the store: a gated queue's claims respect its pause, caps, key limits
and rate window; what they refuse is held, never lost, and woken best first when a slot
frees."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from krolik.flow import Hold, change_gates
from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, RunRef, TaskFilter
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import queue_starts
from krolik.waker import Waker
from tests.contract.store.support import (
    HANDLERS,
    LEASE,
    OTHER_WORKER,
    WORKER,
    add,
    backdate,
    current,
    drain_outbox,
    due_outbox,
    take,
)

QUEUE = "default"


async def claim_ids(store: TaskStore, ids: list[int], worker: str = WORKER) -> list[int]:
    """The ids a claim naming ``ids`` took (maybe others than those named)."""
    answers = await store.claim_many(ids, worker, LEASE, HANDLERS)
    return sorted(task.id for task in answers if task is not None)


async def held(store: TaskStore, task_id: int) -> str | None:
    return (await current(store, task_id)).held


async def test_an_ungated_queue_claims_as_before(any_store: TaskStore) -> None:
    task = await add(any_store)
    await any_store.set_gates(QUEUE, {"paused": False})  # a row, but no gate
    [claimed] = await any_store.claim_many([task.id], WORKER, LEASE, HANDLERS)
    assert claimed is not None
    assert claimed.id == task.id
    assert not claimed.gated


async def test_a_paused_queue_starts_nothing_until_resumed(any_store: TaskStore) -> None:
    await change_gates(any_store, QUEUE, {"paused": True})
    ids = [(await add(any_store)).id for _ in range(3)]
    await drain_outbox(any_store)
    assert await claim_ids(any_store, ids) == []
    assert [await held(any_store, i) for i in ids] == [Hold.PAUSED.value] * 3
    assert await any_store.held_counts() == {QUEUE: {"paused": 3}}
    assert await any_store.wake(QUEUE) == 0  # still paused
    assert await due_outbox(any_store) == []

    await change_gates(any_store, QUEUE, {"paused": False})  # wakes them all
    assert await due_outbox(any_store) == ids
    assert [await held(any_store, i) for i in ids] == [None] * 3
    assert await claim_ids(any_store, ids) == ids


async def test_max_running_holds_across_workers(any_store: TaskStore) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 2})
    ids = [(await add(any_store)).id for _ in range(5)]
    await drain_outbox(any_store)
    first = await any_store.claim_many(ids[:3], WORKER, LEASE, HANDLERS)
    assert await claim_ids(any_store, ids[3:], OTHER_WORKER) == []
    runs = [task for task in first if task is not None]
    assert len(runs) == 2
    assert all(task.gated for task in runs)
    assert (await any_store.held_counts())[QUEUE] == {"max_running": 3}
    assert await any_store.wake(QUEUE) == 0  # no free slot
    # A run ends: its slot goes to one held task, and only one.
    assert await any_store.complete(RunRef.of(runs[0]), "ok")
    assert await any_store.wake(QUEUE) == 1
    [woken] = await due_outbox(any_store)
    assert woken in ids
    assert woken not in {task.id for task in runs}
    assert await claim_ids(any_store, [woken], OTHER_WORKER) == [woken]
    assert await claim_ids(any_store, ids, OTHER_WORKER) == []


async def test_the_best_waiting_task_takes_the_free_slot(any_store: TaskStore) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 1})
    running, run = await take(any_store, await add(any_store))
    low = [(await add(any_store, priority=0)).id for _ in range(3)]
    high = (await add(any_store, priority=5)).id
    await drain_outbox(any_store)
    assert await claim_ids(any_store, [*low, high]) == []  # the slot is taken: all held
    assert await any_store.complete(run, "ok")
    # A message naming a low task claims the best one waiting: the high one.
    assert await claim_ids(any_store, [low[0]]) == [high]
    assert await held(any_store, low[0]) == Hold.MAX_RUNNING.value
    assert (await current(any_store, running.id)).status is TaskStatus.DONE


async def test_a_key_limit_lets_a_small_tenant_pass_a_big_one(any_store: TaskStore) -> None:
    await any_store.set_gates(QUEUE, {"max_running_per_key": 2})
    big = [(await add(any_store, concurrency_key="A")).id for _ in range(10)]
    small = [(await add(any_store, concurrency_key="B")).id for _ in range(2)]
    await drain_outbox(any_store)
    # The messages of A's ten come first: their claim starts two of A's and, in the
    # slots A may not take, B's two: B is not behind A's backlog, not even its messages.
    started = await claim_ids(any_store, big)
    assert started == sorted(big[:2] + small)
    assert (await any_store.held_counts())[QUEUE] == {"key_limit": 8}
    assert await claim_ids(any_store, small) == []  # their messages come late: started
    # A wake-up with A at its limit dispatches none of A's.
    assert await any_store.wake(QUEUE) == 0


async def test_the_keys_are_walked_round(any_store: TaskStore) -> None:
    """Each claim walks the keys with pending tasks from the one after the key it served
    last: keys beyond the first few are reached, and none keeps the turn."""
    await any_store.set_gates(QUEUE, {"max_running_per_key": 1})
    keys = [f"tenant-{n}" for n in range(6)]
    by_key = {
        key: [(await add(any_store, concurrency_key=key)).id for _ in range(2)] for key in keys
    }
    await drain_outbox(any_store)
    _, first = await take(any_store, await current(any_store, by_key[keys[0]][0]))  # kept running
    served: list[str | None] = []
    for _ in range(len(keys) - 1):
        # The message names tenant-0's second task, whose key is at its limit; each run
        # ends at once, so every other key has room again at the next claim.
        [task] = [
            t
            for t in await any_store.claim_many([by_key[keys[0]][1]], WORKER, LEASE, HANDLERS)
            if t
        ]
        served.append(task.concurrency_key)
        assert await any_store.complete(RunRef.of(task), "ok")
    assert served == keys[1:]
    assert await held(any_store, by_key[keys[0]][1]) == Hold.KEY_LIMIT.value
    assert await any_store.complete(first, "ok")


async def test_a_rate_limit_holds_past_its_window_and_wakes_when_it_slides(
    any_store: TaskStore,
) -> None:
    await change_gates(any_store, QUEUE, {"rate_limit": "3/minute"})
    ids = [(await add(any_store)).id for _ in range(5)]
    await drain_outbox(any_store)
    assert len(await claim_ids(any_store, ids)) == 3
    assert (await any_store.held_counts())[QUEUE] == {"rate_limit": 2}
    [(queue, frees_in)] = (await any_store.held_queues()).items()
    assert queue == QUEUE
    assert frees_in is not None
    assert 50 < frees_in <= 61  # the window and a slice
    assert await any_store.wake(QUEUE) == 0
    # A minute later (the starts moved back), the window has room for the other two.
    assert isinstance(any_store, SqlTaskStore)
    a_while_ago = datetime.now(UTC) - timedelta(minutes=2)
    async with any_store.engine.begin() as conn:
        await conn.execute(update(queue_starts).values(slice_at=a_while_ago))
    assert (await any_store.held_queues())[QUEUE] == 0
    assert await any_store.wake(QUEUE) == 2
    assert len(await claim_ids(any_store, await due_outbox(any_store))) == 2


async def test_lifting_the_limits_wakes_every_held_task(any_store: TaskStore) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 0})
    ids = [(await add(any_store)).id for _ in range(4)]
    await drain_outbox(any_store)
    assert await claim_ids(any_store, ids) == []
    await change_gates(any_store, QUEUE, {"max_running": None})
    assert await due_outbox(any_store) == ids
    assert await claim_ids(any_store, ids) == ids  # ungated again: claimed plainly


async def test_a_rescued_run_gives_its_slot_back(any_store: TaskStore) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 1})
    lost, _ = await take(any_store, await add(any_store))
    waiting = (await add(any_store)).id
    await drain_outbox(any_store)
    assert await claim_ids(any_store, [waiting]) == []
    await backdate(any_store, lost.id, lease_expires_at=timedelta(seconds=5))
    [rescued] = await any_store.rescue_expired(10)
    assert rescued.status is TaskStatus.PENDING
    assert await any_store.wake(QUEUE) == 1
    # The rescued task has its message again too; whichever comes first takes the slot.
    due = await due_outbox(any_store)
    assert waiting in due
    assert len(await claim_ids(any_store, due)) == 1


async def test_a_stale_held_task_is_not_dispatched_again_by_the_rescuer(
    any_store: TaskStore,
) -> None:
    await any_store.set_gates(QUEUE, {"paused": True})
    task = await add(any_store)
    await drain_outbox(any_store)
    assert await claim_ids(any_store, [task.id]) == []
    await backdate(any_store, task.id, run_at=timedelta(hours=1), updated_at=timedelta(hours=1))
    assert await any_store.redispatch_stale(60, 100) == 0


async def test_gates_are_data(any_store: TaskStore) -> None:
    assert not (await any_store.get_gates("emails")).gated
    gates = await any_store.set_gates("emails", {"max_running": 3, "rate_limit": "60/minute"})
    assert gates.gated
    assert gates.max_running == 3
    assert gates.rate is not None
    assert gates.rate.amount == 60
    assert gates.rate.window_seconds == 60
    gates = await any_store.set_gates("emails", {"rate_limit": None})
    assert gates.max_running == 3
    assert gates.rate_limit is None
    assert [g.name for g in await any_store.list_gates()] == ["emails"]
    with pytest.raises(ValueError, match="not a queue gate"):
        await any_store.set_gates("emails", {"max_runing": 3})
    with pytest.raises(ValueError, match="not a rate limit"):
        await change_gates(any_store, "emails", {"rate_limit": "often"})


async def test_the_settings_limits_hold_until_the_api_changes_them(any_store: TaskStore) -> None:
    defaults = {"partner": {"max_running": 5, "rate_limit": "60/minute"}}
    assert await any_store.declare_gates(defaults) == ["partner"]
    gates = await any_store.get_gates("partner")
    assert (gates.max_running, gates.rate_limit) == (5, "60/minute")
    # A worker started with other settings writes them again...
    assert await any_store.declare_gates({"partner": {"max_running": 8}}) == ["partner"]
    gates = await any_store.get_gates("partner")
    assert (gates.max_running, gates.rate_limit) == (8, None)
    # ...until a change through the API takes the queue over.
    await any_store.set_gates("partner", {"max_running": 2})
    assert await any_store.declare_gates(defaults) == []
    assert (await any_store.get_gates("partner")).max_running == 2


async def test_the_waker_writes_the_settings_limits_and_wakes_what_they_allow(
    any_store: TaskStore,
) -> None:
    await any_store.declare_gates({QUEUE: {"max_running": 0}})
    ids = [(await add(any_store)).id for _ in range(2)]
    await drain_outbox(any_store)
    assert await claim_ids(any_store, ids) == []
    waker = Waker(any_store, defaults={QUEUE: {"max_running": 1}})
    await waker.tick()
    assert (await any_store.get_gates(QUEUE)).max_running == 1
    assert len(await due_outbox(any_store)) == 1  # one slot: one task woken


async def test_a_worker_takes_the_best_held_task_into_its_freed_slot(any_store: TaskStore) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 1})
    _, run = await take(any_store, await add(any_store))
    low = (await add(any_store)).id
    high = (await add(any_store, priority=3)).id
    await drain_outbox(any_store)
    assert await claim_ids(any_store, [low, high]) == []
    assert await any_store.claim_held(QUEUE, 1, WORKER, LEASE, HANDLERS) == []  # still full
    assert await any_store.complete(run, "ok")
    [taken] = await any_store.claim_held(QUEUE, 1, WORKER, LEASE, HANDLERS)
    assert taken.id == high
    assert taken.gated
    assert taken.status is TaskStatus.PROCESSING
    assert await due_outbox(any_store) == []  # no message went out for it


async def test_a_due_task_of_higher_priority_is_claimed_before_the_one_named(
    any_store: TaskStore,
) -> None:
    low = [(await add(any_store)).id for _ in range(3)]
    high = (await add(any_store, priority=5)).id
    await drain_outbox(any_store)
    # No gates on the queue: the message of a low task claims the high one, and the low
    # one gets a message of its own again.
    assert await claim_ids(any_store, [low[0]]) == [high]
    assert await due_outbox(any_store) == [low[0]]
    assert await claim_ids(any_store, [low[1]]) == [low[1]]  # none better is left
    later = (await add(any_store, priority=9, delay_seconds=60)).id
    assert await claim_ids(any_store, [low[2]]) == [low[2]]  # one not due does not count
    assert (await current(any_store, later)).status is TaskStatus.PENDING


async def test_a_task_refused_for_a_better_one_taken_meanwhile_is_claimed_all_the_same(
    any_store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain claim refuses a task while one of higher priority is due; another claim
    may take that one before the claim of the best runs. The task named is then the best
    there is, and is claimed (it once was answered "not claimable" and left pending
    without a message)."""
    low = (await add(any_store)).id
    high = (await add(any_store, priority=5)).id
    await drain_outbox(any_store)
    assert isinstance(any_store, SqlTaskStore)
    claim_the_best = any_store._claim_outranked

    async def raced(*args: Any) -> Any:
        assert await claim_ids(any_store, [high], OTHER_WORKER) == [high]  # meanwhile
        return await claim_the_best(*args)

    monkeypatch.setattr(any_store, "_claim_outranked", raced)
    assert await claim_ids(any_store, [low]) == [low]


async def test_claims_racing_for_the_last_slots_never_pass_the_cap(any_store: TaskStore) -> None:
    """Many claims at once, each on a connection of its own: the one that waited for the
    queue's lock counts the runs that the claim before it committed."""
    cap = 3
    await any_store.set_gates(QUEUE, {"max_running": cap})
    ids = [(await add(any_store)).id for _ in range(24)]
    await drain_outbox(any_store)
    for _ in range(3):
        groups = [ids[i : i + 2] for i in range(0, len(ids), 2)]
        answers = await asyncio.gather(
            *(any_store.claim_many(group, WORKER, LEASE, HANDLERS) for group in groups)
        )
        runs = [task for answer in answers for task in answer if task is not None]
        assert len(runs) == cap
        for task in runs:
            assert await any_store.complete(RunRef.of(task), "ok")
        ids = [i for i in ids if (await current(any_store, i)).status is TaskStatus.PENDING]
        await any_store.wake(QUEUE)
        await drain_outbox(any_store)


async def test_after_a_gated_claim_ungated_queues_claim_as_before(any_store: TaskStore) -> None:
    """A store that claimed in a gated queue lately tries the gated claim first: the
    tasks of ungated queues are claimed all the same, priority included."""
    await any_store.set_gates("capped", {"max_running": 1})
    capped = await add(any_store, queue="capped")
    plain = [(await add(any_store)).id for _ in range(2)]
    high = (await add(any_store, priority=5)).id
    await drain_outbox(any_store)
    [run] = await any_store.claim_many([capped.id], WORKER, LEASE, HANDLERS)
    assert run is not None
    assert run.gated
    assert await claim_ids(any_store, [plain[0]]) == [high]  # it outranks the one named
    assert await claim_ids(any_store, plain) == plain
    assert await claim_ids(any_store, plain) == []  # claimed once only


async def test_a_new_task_takes_its_handlers_default_priority_else_its_queues(
    any_store: TaskStore,
) -> None:
    await any_store.declare_handlers({"echo": 4, "other": None})
    await any_store.set_gates(QUEUE, {"default_priority": 2})
    assert (await add(any_store)).priority == 4
    assert (await add(any_store, name="other")).priority == 2
    assert (await add(any_store, name="other", queue="elsewhere")).priority == 0
    assert (await add(any_store, priority=-1)).priority == -1
    assert (await add(any_store, idempotency_key="k1")).priority == 4  # the keyed insert
    batch = await any_store.enqueue(
        [
            NewTask(name="echo", queue=QUEUE, payload=1),
            NewTask(name="other", queue=QUEUE, payload=2, priority=9),
            NewTask(name="other", queue=QUEUE, payload=3),
        ]
    )
    assert [item.task.priority for item in batch] == [4, 9, 2]
    # A worker with other code writes its own: the handler's default is data too.
    await any_store.declare_handlers({"echo": None})
    assert (await add(any_store)).priority == 2
    assert (await any_store.get_gates(QUEUE)).default_priority == 2


async def test_the_settings_give_a_queue_its_default_priority(any_store: TaskStore) -> None:
    assert await any_store.declare_gates({"urgent": {"default_priority": 10}}) == ["urgent"]
    gates = await any_store.get_gates("urgent")
    assert (gates.default_priority, gates.gated) == (10, False)  # a default is not a gate
    assert (await add(any_store, queue="urgent")).priority == 10


async def test_a_run_that_ends_hands_its_slot_over_in_the_same_commit(
    any_store: TaskStore,
) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 1})
    ending, run = await take(any_store, await add(any_store))
    low = (await add(any_store)).id
    high = (await add(any_store, priority=3)).id
    await drain_outbox(any_store)
    assert await claim_ids(any_store, [low, high]) == []  # both held: the cap is full
    done, claimed = await any_store.complete_and_claim_held(
        run, {"ok": 1}, QUEUE, 4, WORKER, LEASE, HANDLERS
    )
    assert done
    assert [(task.id, task.status, task.gated) for task in claimed] == [
        (high, TaskStatus.PROCESSING, True)
    ]  # the slot the run freed, and only that one: the cap is 1
    finished = await current(any_store, ending.id)
    assert (finished.status, finished.result) == (TaskStatus.DONE, {"ok": 1})
    [attempt] = await any_store.attempts_of(ending.id)
    assert attempt.outcome is AttemptOutcome.SUCCEEDED
    assert await held(any_store, low) == Hold.MAX_RUNNING.value
    assert await due_outbox(any_store) == []  # no message went out for the one claimed


async def test_a_stale_run_hands_nothing_over(any_store: TaskStore) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 1})
    _, run = await take(any_store, await add(any_store))
    waiting = (await add(any_store)).id
    await drain_outbox(any_store)
    assert await claim_ids(any_store, [waiting]) == []
    stale = RunRef(run.task_id, run.token + 1, run.attempt, OTHER_WORKER)
    assert await any_store.complete_and_claim_held(
        stale, "late", QUEUE, 1, OTHER_WORKER, LEASE, HANDLERS
    ) == (False, [])
    assert (await current(any_store, run.task_id)).status is TaskStatus.PROCESSING
    assert await held(any_store, waiting) == Hold.MAX_RUNNING.value


async def test_a_handover_takes_every_free_slot_of_the_cap_and_no_more(
    any_store: TaskStore,
) -> None:
    await any_store.set_gates(QUEUE, {"max_running": 3})
    _, run = await take(any_store, await add(any_store))
    await take(any_store, await add(any_store))
    ids = [(await add(any_store)).id for _ in range(4)]
    await drain_outbox(any_store)
    assert len(await claim_ids(any_store, ids)) == 1  # the third slot
    done, claimed = await any_store.complete_and_claim_held(
        run, None, QUEUE, 4, WORKER, LEASE, HANDLERS
    )
    assert done
    assert len(claimed) == 1  # the slot freed; the other two run
    running = await any_store.list_tasks(
        TaskFilter(status=TaskStatus.PROCESSING), before_id=None, limit=10
    )
    assert len(running) == 3
