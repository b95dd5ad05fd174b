"""Tasks from the API's side: enqueue (keys, delays), read, list, cancel, retry; on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from krolik.errors import InvalidTransition, TaskNotFound
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, TaskFilter
from tests.contract.store.support import (
    BACK_TO_PENDING,
    CLAIM,
    FINISHERS,
    HANDLERS,
    LEASE,
    WORKER,
    add,
    current,
    drain_outbox,
    due_outbox,
    eventually,
    is_utc,
    near,
    take,
)


# -- enqueue ---------------------------------------------------------------------------
async def test_enqueue_stores_the_fields_and_the_defaults(any_store: TaskStore) -> None:
    before = datetime.now(UTC)
    [plain, full] = await any_store.enqueue(
        [
            NewTask(name="echo", queue="default", payload={"a": [1, 2]}),
            NewTask(
                name="report",
                queue="reports",
                payload="p",
                max_attempts=5,
                timeout_seconds=1.5,
                idempotency_key="key-1",
            ),
        ]
    )
    assert plain.created
    assert full.created
    assert plain.task.id < full.task.id
    task = plain.task
    assert (task.name, task.queue, task.payload) == ("echo", "default", {"a": [1, 2]})
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0
    assert task.max_attempts is None
    assert task.timeout_seconds is None
    assert task.idempotency_key is None
    assert task.result is task.error is task.traceback is task.worker_id is None
    assert task.cancel_requested is False
    assert task.lease_expires_at is task.started_at is task.finished_at is None
    assert near(task.run_at, before)
    assert near(task.created_at, before)
    assert task.updated_at >= task.created_at
    assert await current(any_store, task.id) == task

    other = full.task
    assert (other.name, other.queue, other.payload) == ("report", "reports", "p")
    assert (other.max_attempts, other.timeout_seconds, other.idempotency_key) == (5, 1.5, "key-1")
    assert await current(any_store, other.id) == other
    assert await due_outbox(any_store) == [task.id, other.id]


async def test_max_attempts_stays_unset_until_the_claim_gives_the_default(
    any_store: TaskStore,
) -> None:
    unset = await add(any_store)
    fixed = await add(any_store, max_attempts=7)
    assert (await current(any_store, unset.id)).max_attempts is None

    claimed, _ = await take(any_store, unset, default_max_attempts=4)
    assert claimed.max_attempts == 4
    assert (await current(any_store, unset.id)).max_attempts == 4
    claimed, _ = await take(any_store, fixed, default_max_attempts=4)
    assert claimed.max_attempts == 7


async def test_get_of_a_missing_task_is_none(any_store: TaskStore) -> None:
    assert await any_store.get(123_456) is None


# -- idempotency -----------------------------------------------------------------------
async def test_the_same_idempotency_key_gives_the_same_task(any_store: TaskStore) -> None:
    first = await add(any_store, payload="first", idempotency_key="once")
    [again] = await any_store.enqueue(
        [NewTask(name="echo", queue="default", payload="second", idempotency_key="once")]
    )
    assert again.created is False
    assert again.task == first
    [one, two] = await any_store.enqueue(
        [
            NewTask(name="echo", queue="default", payload="a", idempotency_key="batch"),
            NewTask(name="echo", queue="default", payload="b", idempotency_key="batch"),
        ]
    )
    assert (one.created, two.created) == (True, False)
    assert two.task.id == one.task.id
    assert two.task.payload == "a"

    listed = await any_store.list_tasks(TaskFilter(), before_id=None, limit=100)
    assert sorted(task.id for task in listed) == [first.id, one.task.id]
    assert await due_outbox(any_store) == [first.id, one.task.id]


# -- run_at / delay --------------------------------------------------------------------
async def test_a_delayed_task_is_claimable_only_when_due(any_store: TaskStore) -> None:
    delay = 0.3
    before = datetime.now(UTC)
    task = await add(any_store, delay_seconds=delay)
    assert task.run_at >= before + timedelta(seconds=delay)
    assert near(task.run_at, before + timedelta(seconds=delay))

    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None
    assert await any_store.claim_outbox(100, CLAIM) == []
    assert (await current(any_store, task.id)).status is TaskStatus.PENDING

    entries = await eventually(lambda: any_store.claim_outbox(100, CLAIM))
    assert datetime.now(UTC) >= task.run_at
    assert [entry.task_id for entry in entries] == [task.id]
    claimed, _ = await take(any_store, task)
    assert claimed.status is TaskStatus.PROCESSING


async def test_run_at_is_kept_as_the_same_instant_in_any_zone(any_store: TaskStore) -> None:
    plus_five = timezone(timedelta(hours=5))
    later = (datetime.now(UTC) + timedelta(hours=1)).astimezone(plus_five)
    earlier = datetime.now(UTC) - timedelta(minutes=5)

    future = await add(any_store, run_at=later)
    past = await add(any_store, run_at=earlier)
    assert future.run_at == later
    assert is_utc(future.run_at)
    assert (await current(any_store, future.id)).run_at == later
    assert past.run_at == earlier

    assert await any_store.claim(future.id, WORKER, LEASE, HANDLERS) is None
    await take(any_store, past)
    assert await due_outbox(any_store) == [past.id]


# -- cancel ----------------------------------------------------------------------------
async def test_cancel_a_pending_task(any_store: TaskStore) -> None:
    task, other = await add(any_store), await add(any_store)
    cancelled = await any_store.cancel(task.id)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert await current(any_store, task.id) == cancelled
    assert await due_outbox(any_store) == [other.id]
    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None


async def test_cancel_a_running_task_asks_it_to_stop(any_store: TaskStore) -> None:
    task = await add(any_store)
    _, run = await take(any_store, task)
    asked = await any_store.cancel(task.id)
    assert (asked.status, asked.cancel_requested) == (TaskStatus.PROCESSING, True)
    assert await any_store.heartbeat([run], LEASE) == {run: True}
    assert await any_store.mark_cancelled(run)
    assert (await current(any_store, task.id)).status is TaskStatus.CANCELLED


@pytest.mark.parametrize("action", sorted(BACK_TO_PENDING))
async def test_a_run_asked_to_cancel_is_not_sent_back_to_pending(
    any_store: TaskStore, action: str
) -> None:
    """A retry or a release of a run whose task was cancelled meanwhile ends it cancelled,
    and says so: the worker logs and counts what really happened."""
    task = await add(any_store)
    await drain_outbox(any_store)
    _, run = await take(any_store, task)
    await any_store.cancel(task.id)
    assert await FINISHERS[action](any_store, run) is TaskStatus.CANCELLED
    after = await current(any_store, task.id)
    assert after.status is TaskStatus.CANCELLED
    assert after.finished_at is not None
    assert await due_outbox(any_store) == []


async def test_cancel_refuses_final_and_missing_tasks(any_store: TaskStore) -> None:
    done, failed, cancelled = [await add(any_store) for _ in range(3)]
    _, run = await take(any_store, done)
    await any_store.complete(run, "r")
    _, run = await take(any_store, failed)
    await any_store.fail(run, "boom", None)
    await any_store.cancel(cancelled.id)
    for task in (done, failed, cancelled):
        before = await current(any_store, task.id)
        with pytest.raises(InvalidTransition):
            await any_store.cancel(task.id)
        assert await current(any_store, task.id) == before
    with pytest.raises(TaskNotFound):
        await any_store.cancel(999_999)


# -- retry (API) -----------------------------------------------------------------------
async def test_retry_sends_a_dead_task_back_with_fresh_attempts(any_store: TaskStore) -> None:
    failed, cancelled = await add(any_store, max_attempts=1), await add(any_store)
    _, run = await take(any_store, failed)
    await any_store.fail(run, "boom", "Traceback")
    await any_store.cancel(cancelled.id)
    await drain_outbox(any_store)

    for task in (failed, cancelled):
        retried = await any_store.retry(task.id)
        assert retried.status is TaskStatus.PENDING
        assert retried.attempts == 0
        assert retried.error is retried.traceback is retried.finished_at is None
        assert retried.cancel_requested is False
        assert await current(any_store, task.id) == retried
    assert await due_outbox(any_store) == [failed.id, cancelled.id]
    again, _ = await take(any_store, failed)
    assert (again.attempts, again.max_attempts) == (1, 1)


async def test_retry_refuses_live_and_done_tasks(any_store: TaskStore) -> None:
    pending, running, done = [await add(any_store) for _ in range(3)]
    await take(any_store, running)
    _, run = await take(any_store, done)
    await any_store.complete(run, None)
    for task in (pending, running, done):
        before = await current(any_store, task.id)
        with pytest.raises(InvalidTransition):
            await any_store.retry(task.id)
        assert await current(any_store, task.id) == before
    with pytest.raises(TaskNotFound):
        await any_store.retry(999_999)


# -- listing ---------------------------------------------------------------------------
async def test_list_tasks_filters_and_pages_newest_first(any_store: TaskStore) -> None:
    a = await add(any_store, name="alpha", queue="q1")
    b = await add(any_store, name="beta", queue="q1")
    c = await add(any_store, name="alpha", queue="q2")
    d = await add(any_store, name="alpha", queue="q1")
    _, run = await take(any_store, b)
    await any_store.complete(run, None)

    async def ids(
        task_filter: TaskFilter = TaskFilter(), before: int | None = None, limit: int = 100
    ) -> list[int]:
        found = await any_store.list_tasks(task_filter, before_id=before, limit=limit)
        return [task.id for task in found]

    assert await ids() == [d.id, c.id, b.id, a.id]
    assert await ids(limit=2) == [d.id, c.id]
    assert await ids(before=c.id) == [b.id, a.id]
    assert await ids(before=c.id, limit=1) == [b.id]
    assert await ids(before=a.id) == []
    assert await ids(TaskFilter(status=TaskStatus.DONE)) == [b.id]
    assert await ids(TaskFilter(status=TaskStatus.PENDING)) == [d.id, c.id, a.id]
    assert await ids(TaskFilter(name="alpha")) == [d.id, c.id, a.id]
    assert await ids(TaskFilter(queue="q2")) == [c.id]
    assert await ids(TaskFilter(name="alpha", queue="q1"), before=d.id) == [a.id]
    assert await ids(TaskFilter(status=TaskStatus.FAILED)) == []


# -- timestamps and JSON ---------------------------------------------------------------
async def test_timestamps_are_aware_utc_and_in_order(any_store: TaskStore) -> None:
    task = await add(any_store)
    claimed, run = await take(any_store, task)
    assert await any_store.complete(run, "r")
    done = await current(any_store, task.id)
    for stamp in (
        done.run_at,
        done.created_at,
        done.updated_at,
        done.started_at,
        done.finished_at,
        claimed.lease_expires_at,
    ):
        assert is_utc(stamp), stamp
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.updated_at >= done.started_at
    assert near(done.finished_at, datetime.now(UTC))


JSON_VALUES = {
    "string": "x",
    "int": 42,
    "negative": -7,
    "float": 1.5,
    "whole_float": 1.0,
    "big_float": 1e20,
    "bool": True,
    "none": None,
    "empty_object": {},
    "list": [1, "two", None, 3.25, False],
    "nested": {"a": {"b": [1, {"c": "d"}]}, "e": None, "f": []},
    "unicode": {"żółw": "🐇 日本語 \u00e9\u0301", "quote": "\"'\\/\n\t"},
}


@pytest.mark.parametrize("value", list(JSON_VALUES.values()), ids=list(JSON_VALUES))
async def test_payload_and_result_round_trip_as_json(any_store: TaskStore, value: Any) -> None:
    task = await add(any_store, payload=value)
    assert task.payload == value
    assert type(task.payload) is type(value)
    claimed, run = await take(any_store, task)
    assert claimed.payload == value
    assert await any_store.complete(run, value)
    done = await current(any_store, task.id)
    assert (done.payload, done.result) == (value, value)
    assert type(done.result) is type(value)


async def test_a_batch_of_keyed_tasks_with_expiry_goes_in_whole(any_store: TaskStore) -> None:
    """A batch of keyed tasks is one multi-row INSERT: every parameter of a new task's
    columns must be numbered once per row (``expires_in`` once was written twice)."""
    made = await any_store.enqueue(
        [
            NewTask(
                name="echo",
                queue="default",
                payload=n,
                idempotency_key=f"expiring-{n}",
                expires_in_seconds=60 if n % 2 else None,
            )
            for n in range(3)
        ]
    )
    assert [item.created for item in made] == [True] * 3
    assert [item.task.expires_at is not None for item in made] == [False, True, False]
    plain = await any_store.enqueue(
        [NewTask(name="echo", queue="default", payload=n, expires_in_seconds=5) for n in (1, 2)]
    )
    assert all(item.task.expires_at is not None for item in plain)
