"""A run from the worker's side: claim, heartbeat, finish, go back, many at once; on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import RunRef
from tests.contract.store.support import (
    AFTER,
    BACK_TO_PENDING,
    CLAIM,
    FINISHERS,
    HANDLERS,
    LEASE,
    OTHER_WORKER,
    WORKER,
    add,
    current,
    drain_outbox,
    due_outbox,
    eventually,
    handlers,
    near,
    take,
)


# -- claim -----------------------------------------------------------------------------
async def test_claim_takes_a_lease(any_store: TaskStore) -> None:
    task = await add(any_store)
    before = datetime.now(UTC)
    claimed, _ = await take(any_store, task, lease=LEASE)
    assert claimed.status is TaskStatus.PROCESSING
    assert claimed.attempts == 1
    assert claimed.worker_id == WORKER
    assert claimed.lease_expires_at is not None
    assert claimed.lease_expires_at > datetime.now(UTC)
    assert near(claimed.lease_expires_at, before + timedelta(seconds=LEASE))
    assert claimed.started_at is not None
    assert claimed.started_at >= claimed.created_at
    assert await current(any_store, task.id) == claimed

    assert await any_store.claim(task.id, OTHER_WORKER, LEASE, HANDLERS) is None
    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None
    assert await any_store.claim(987_654, WORKER, LEASE, HANDLERS) is None
    assert await current(any_store, task.id) == claimed


# -- guarded transitions ---------------------------------------------------------------
@pytest.mark.parametrize("action", list(FINISHERS))
async def test_a_run_is_finished_only_by_its_owner_and_only_once(
    any_store: TaskStore, action: str
) -> None:
    finish = FINISHERS[action]
    task = await add(any_store)
    await drain_outbox(any_store)
    claimed, run = await take(any_store, task)
    stale = [
        RunRef(run.task_id, run.token - 1, run.attempt, run.worker_id),
        RunRef(run.task_id, run.token + 1, run.attempt, run.worker_id),
        RunRef(999_999, run.token, run.attempt, run.worker_id),
    ]
    refused = None if action in BACK_TO_PENDING else False
    for ref in stale:
        assert await finish(any_store, ref) is refused, ref
    assert await current(any_store, task.id) == claimed

    accepted = AFTER[action][0] if action in BACK_TO_PENDING else True
    assert await finish(any_store, run) is accepted
    after = await current(any_store, task.id)
    assert (after.status, after.attempts) == AFTER[action]
    assert after.lease_expires_at is None

    assert await finish(any_store, run) is refused
    assert await current(any_store, task.id) == after


async def test_finishing_writes_the_outcome(any_store: TaskStore) -> None:
    done, failed, cancelled = [await add(any_store) for _ in range(3)]
    runs = [(await take(any_store, task))[1] for task in (done, failed, cancelled)]
    assert await any_store.complete(runs[0], {"answer": 42})
    assert await any_store.fail(runs[1], "ValueError: boom", "Traceback")
    assert await any_store.mark_cancelled(runs[2])

    done = await current(any_store, done.id)
    assert (done.status, done.result, done.error) == (TaskStatus.DONE, {"answer": 42}, None)
    failed = await current(any_store, failed.id)
    assert (failed.status, failed.error, failed.traceback) == (
        TaskStatus.FAILED,
        "ValueError: boom",
        "Traceback",
    )
    cancelled = await current(any_store, cancelled.id)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error
    for task in (done, failed, cancelled):
        assert task.finished_at is not None
        assert task.started_at is not None
        assert task.finished_at >= task.started_at


async def test_release_gives_the_task_back_at_once_without_counting_the_attempt(
    any_store: TaskStore,
) -> None:
    task = await add(any_store)
    await drain_outbox(any_store)
    _, run = await take(any_store, task)
    assert await any_store.release(run)
    released = await current(any_store, task.id)
    assert (released.status, released.attempts, released.worker_id) == (
        TaskStatus.PENDING,
        0,
        None,
    )
    assert await due_outbox(any_store) == [task.id]
    again, _ = await take(any_store, task, worker=OTHER_WORKER)
    assert again.attempts == 1


async def test_fail_unrunnable_fails_only_a_pending_task(any_store: TaskStore) -> None:
    pending, running = await add(any_store), await add(any_store)
    await take(any_store, running)
    assert await any_store.fail_unrunnable(pending.id, "no handler") is True
    assert await any_store.fail_unrunnable(pending.id, "no handler") is False
    assert await any_store.fail_unrunnable(running.id, "no handler") is False
    assert await any_store.fail_unrunnable(999_999, "no handler") is False
    failed = await current(any_store, pending.id)
    assert (failed.status, failed.error) == (TaskStatus.FAILED, "no handler")
    assert failed.finished_at is not None
    assert (await current(any_store, running.id)).status is TaskStatus.PROCESSING


# -- heartbeat -------------------------------------------------------------------------
async def test_heartbeat_extends_owned_leases_and_reports_cancel_requests(
    any_store: TaskStore,
) -> None:
    mine, cancelled, theirs, finished = [await add(any_store) for _ in range(4)]
    mine, mine_run = await take(any_store, mine, lease=5)
    _, cancelled_run = await take(any_store, cancelled, lease=5)
    theirs, _ = await take(any_store, theirs, worker=OTHER_WORKER, lease=5)
    _, finished_run = await take(any_store, finished, lease=5)
    assert await any_store.complete(finished_run, None)
    await any_store.cancel(cancelled.id)

    answer = await any_store.heartbeat(
        [
            mine_run,
            cancelled_run,
            RunRef(theirs.id, theirs.run_token + 1, theirs.attempts, WORKER),  # not its token
            RunRef(mine.id, mine.run_token - 1, mine.attempts, WORKER),  # an older run's
            finished_run,  # no longer running
            RunRef(999_999, 1, 1, WORKER),  # no such task
        ],
        LEASE * 10,
    )
    assert answer == {mine_run: False, cancelled_run: True}
    extended = await current(any_store, mine.id)
    assert extended.lease_expires_at is not None
    assert mine.lease_expires_at is not None
    assert extended.lease_expires_at > mine.lease_expires_at + timedelta(seconds=100)
    assert (await current(any_store, theirs.id)).lease_expires_at == theirs.lease_expires_at
    assert await any_store.heartbeat([], LEASE) == {}


# -- retry scheduling ------------------------------------------------------------------
async def test_retry_later_moves_run_at_by_the_delay(any_store: TaskStore) -> None:
    task = await add(any_store)
    await drain_outbox(any_store)
    _, run = await take(any_store, task)
    delay = 0.3
    before = datetime.now(UTC)
    assert await any_store.retry_later(run, "ValueError: boom", "Traceback", delay)
    waiting = await current(any_store, task.id)
    assert waiting.status is TaskStatus.PENDING
    assert (waiting.error, waiting.traceback) == ("ValueError: boom", "Traceback")
    assert waiting.run_at >= before + timedelta(seconds=delay)
    assert near(waiting.run_at, before + timedelta(seconds=delay))

    assert await any_store.claim_outbox(100, CLAIM) == []
    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None
    entries = await eventually(lambda: any_store.claim_outbox(100, CLAIM))
    assert datetime.now(UTC) >= waiting.run_at
    assert [entry.task_id for entry in entries] == [task.id]
    again, _ = await take(any_store, task)
    assert again.attempts == 2


# -- many at once (the worker's batched claims and completions) ---------------------------


async def test_claim_many_claims_each_due_task_once_in_order(any_store: TaskStore) -> None:
    first, second = await add(any_store), await add(any_store, max_attempts=7)
    later = await add(any_store, delay_seconds=3600)
    answers = await any_store.claim_many(
        [second.id, first.id, first.id, later.id, 10**12], WORKER, LEASE, handlers(2)
    )
    assert [a.id if a else None for a in answers] == [second.id, first.id, None, None, None]
    claimed_second, claimed_first = answers[0], answers[1]
    assert claimed_first is not None
    assert claimed_second is not None
    assert (claimed_first.status, claimed_first.attempts) == (TaskStatus.PROCESSING, 1)
    assert claimed_first.max_attempts == 2  # the claim's default, written in
    assert claimed_second.max_attempts == 7  # the task's own
    assert claimed_first.worker_id == WORKER
    assert (await current(any_store, later.id)).status is TaskStatus.PENDING


async def test_complete_many_finishes_only_runs_still_owned(any_store: TaskStore) -> None:
    a, b, c = await add(any_store), await add(any_store), await add(any_store)
    _, run_a = await take(any_store, a)
    _, run_b = await take(any_store, b)
    _, run_c = await take(any_store, c)
    stale = RunRef(run_b.task_id, run_b.token + 1, run_b.attempt, run_b.worker_id)
    other = RunRef(run_c.task_id, run_c.token - 1, run_c.attempt, run_c.worker_id)
    answers = await any_store.complete_many([(run_a, {"ok": 1}), (stale, "no"), (other, "no")])
    assert answers == [True, False, False]
    done = await current(any_store, a.id)
    assert (done.status, done.result) == (TaskStatus.DONE, {"ok": 1})
    assert done.finished_at is not None
    assert done.started_at is not None
    assert done.finished_at >= done.started_at
    for untouched in (b.id, c.id):
        assert (await current(any_store, untouched)).status is TaskStatus.PROCESSING
    assert await any_store.complete_many([(run_a, "again")]) == [False]
