"""Every run is kept: one attempt record per ended run, written with the transition that
ended it; progress reports belong to the run that made them. On both stores."""

from __future__ import annotations

from datetime import timedelta

import pytest

from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.base import TaskStore
from tests.contract.store.support import (
    FINISHERS,
    OTHER_WORKER,
    WORKER,
    add,
    backdate,
    current,
    take,
)

OUTCOME = {
    "complete": AttemptOutcome.SUCCEEDED,
    "fail": AttemptOutcome.FAILED,
    "retry_later": AttemptOutcome.RETRIED,
    "mark_cancelled": AttemptOutcome.CANCELLED,
    "release": AttemptOutcome.RELEASED,
}


@pytest.mark.parametrize("finisher", sorted(FINISHERS))
async def test_each_way_a_run_ends_leaves_its_record(any_store: TaskStore, finisher: str) -> None:
    task = await add(any_store)
    claimed, run = await take(any_store, task)
    assert await any_store.attempts_of(task.id) == []  # the running one is the task's
    await FINISHERS[finisher](any_store, run)
    [attempt] = await any_store.attempts_of(task.id)
    assert attempt.outcome is OUTCOME[finisher]
    assert (attempt.attempt, attempt.run_token, attempt.worker_id) == (1, run.token, WORKER)
    assert attempt.started_at == claimed.started_at
    assert attempt.finished_at is not None
    assert attempt.started_at is not None
    assert attempt.duration_seconds is not None
    assert attempt.duration_seconds >= 0
    if finisher in ("fail", "retry_later"):
        assert attempt.error == "ValueError: boom"
    if finisher == "fail":
        assert attempt.traceback == "Traceback ..."
    if finisher in ("complete", "release"):
        assert attempt.error is None


async def test_a_stale_run_writes_no_record(any_store: TaskStore) -> None:
    task = await add(any_store)
    _, run = await take(any_store, task)
    assert await any_store.complete(run, 1)
    for finish in FINISHERS.values():
        await finish(any_store, run)  # refused: the run is over
    assert [a.outcome for a in await any_store.attempts_of(task.id)] == [AttemptOutcome.SUCCEEDED]


async def test_every_run_is_kept_in_order_with_its_own_error(any_store: TaskStore) -> None:
    task = await add(any_store)
    _, first = await take(any_store, task)
    await any_store.retry_later(first, "KeyError: 'a'", "tb 1", 0)
    _, second = await take(any_store, task, worker=OTHER_WORKER)
    await any_store.release(second)  # shutdown: the attempt is not counted
    _, third = await take(any_store, task)
    await any_store.complete(third, {"ok": True})
    attempts = await any_store.attempts_of(task.id)
    assert [(a.attempt, a.outcome, a.worker_id, a.error) for a in attempts] == [
        (1, AttemptOutcome.RETRIED, WORKER, "KeyError: 'a'"),
        (2, AttemptOutcome.RELEASED, OTHER_WORKER, None),
        (2, AttemptOutcome.SUCCEEDED, WORKER, None),
    ]
    assert [a.run_token for a in attempts] == [first.token, second.token, third.token]
    assert attempts[0].traceback == "tb 1"
    assert (await current(any_store, task.id)).error is None  # the task keeps the last


async def test_a_lost_lease_is_recorded_as_lost(any_store: TaskStore) -> None:
    once = await add(any_store, max_attempts=1)
    again = await add(any_store, max_attempts=2)
    for task in (once, again):
        await take(any_store, task)
        await backdate(any_store, task.id, lease_expires_at=timedelta(seconds=5))
    rescued = {r.task_id: r.status for r in await any_store.rescue_expired(100)}
    assert rescued == {once.id: TaskStatus.FAILED, again.id: TaskStatus.PENDING}
    for task in (once, again):
        [attempt] = await any_store.attempts_of(task.id)
        assert attempt.outcome is AttemptOutcome.LOST
        assert attempt.worker_id == WORKER  # the worker it was lost by, not the task's None
        assert attempt.error is not None
        assert "lease expired" in attempt.error


async def test_a_cancel_requested_while_retrying_records_cancelled(any_store: TaskStore) -> None:
    task = await add(any_store)
    _, run = await take(any_store, task)
    await any_store.cancel(task.id)
    assert await any_store.retry_later(run, "boom", None, 0) is TaskStatus.CANCELLED
    [attempt] = await any_store.attempts_of(task.id)
    assert attempt.outcome is AttemptOutcome.CANCELLED


async def test_progress_belongs_to_the_run_and_a_new_claim_clears_it(any_store: TaskStore) -> None:
    task = await add(any_store)
    _, run = await take(any_store, task)
    report = {"fraction": 0.5, "message": "half", "at": "2026-12-02T00:00:00Z"}
    assert await any_store.record_progress([(run, report)]) == [True]
    assert (await current(any_store, task.id)).progress == report
    await any_store.retry_later(run, "boom", None, 0)
    assert await any_store.record_progress([(run, {"fraction": 1.0})]) == [False]  # stale
    assert (await current(any_store, task.id)).progress == report
    await take(any_store, task)
    assert (await current(any_store, task.id)).progress is None


async def test_get_many_reads_the_ids_that_exist(any_store: TaskStore) -> None:
    first, second = await add(any_store), await add(any_store)
    found = await any_store.get_many([second.id, first.id, 999_999])
    assert sorted(task.id for task in found) == [first.id, second.id]
    assert await any_store.get_many([]) == []
