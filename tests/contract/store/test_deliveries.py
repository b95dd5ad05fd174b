"""Webhook deliveries on both stores: a row for every end of a task that names a URL,
written by the statement that ends it, whichever it is; claims shared out and fenced."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from krolik.states import DeliveryState, TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import DeliveryAnswer
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import deliveries
from tests.contract.store.support import AFTER, FINISHERS, add, backdate, take

URL = "https://hooks.example.com/krolik"
FINAL = {TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED}


def answer(delivery_id: int, attempt: int, **fields: object) -> DeliveryAnswer:
    values: dict[str, object] = {
        "delivered": True,
        "status_code": 200,
        "error": None,
        "seconds": 0.01,
        "retry_in_seconds": None,
    }
    return DeliveryAnswer(delivery_id, attempt, **(values | fields))  # type: ignore[arg-type]


@pytest.mark.parametrize("finisher", sorted(FINISHERS))
async def test_a_run_that_ends_the_task_writes_one_delivery(
    any_store: TaskStore, finisher: str
) -> None:
    task = await add(any_store, webhook_url=URL)
    assert task.webhook_url == URL
    _, run = await take(any_store, task)
    await FINISHERS[finisher](any_store, run)
    status = AFTER[finisher][0]
    found = await any_store.deliveries_of(task.id)
    if status not in FINAL:
        assert found == []  # the task goes on: nothing has ended yet
        return
    [delivery] = found
    assert (delivery.url, delivery.task_status, delivery.run_token) == (URL, status, run.token)
    assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
    assert delivery.next_attempt_at <= delivery.created_at + timedelta(seconds=1)


async def test_a_task_without_a_url_writes_none(any_store: TaskStore) -> None:
    task = await add(any_store)
    _, run = await take(any_store, task)
    assert await any_store.complete(run, 1)
    assert await any_store.deliveries_of(task.id) == []
    assert await any_store.claim_deliveries(10, 30) == []


async def test_cancel_rescue_and_unrunnable_write_theirs_too(any_store: TaskStore) -> None:
    cancelled = await add(any_store, webhook_url=URL, delay_seconds=3600)
    await any_store.cancel(cancelled.id)
    unrunnable = await add(any_store, webhook_url=URL)
    assert await any_store.fail_unrunnable(unrunnable.id, "no handler")
    lost = await add(any_store, webhook_url=URL, max_attempts=1)
    await take(any_store, lost, lease=0.01)
    await backdate(any_store, lost.id, lease_expires_at=timedelta(seconds=5))
    [rescued] = await any_store.rescue_expired(10)
    assert rescued.status is TaskStatus.FAILED
    statuses = {
        task.id: [d.task_status for d in await any_store.deliveries_of(task.id)]
        for task in (cancelled, unrunnable, lost)
    }
    assert statuses == {
        cancelled.id: [TaskStatus.CANCELLED],
        unrunnable.id: [TaskStatus.FAILED],
        lost.id: [TaskStatus.FAILED],
    }


async def test_a_task_retried_and_ended_again_is_called_again(any_store: TaskStore) -> None:
    task = await add(any_store, webhook_url=URL)
    _, first = await take(any_store, task)
    assert await any_store.fail(first, "boom", None)
    await any_store.retry(task.id)
    _, second = await take(any_store, task)
    assert await any_store.complete(second, "ok")
    found = await any_store.deliveries_of(task.id)
    assert [(d.task_status, d.run_token) for d in found] == [
        (TaskStatus.FAILED, first.token),
        (TaskStatus.DONE, second.token),
    ]


async def test_a_claim_holds_a_delivery_from_other_senders(any_store: TaskStore) -> None:
    tasks = [await add(any_store, webhook_url=URL) for _ in range(3)]
    for task in tasks:
        _, run = await take(any_store, task)
        assert await any_store.complete(run, None)
    first = await any_store.claim_deliveries(2, 30)
    second = await any_store.claim_deliveries(10, 30)
    assert len(first) == 2
    assert len(second) == 1
    assert {d.task_id for d in first + second} == {task.id for task in tasks}
    assert all(d.attempts == 1 and d.last_attempt_at is not None for d in first + second)
    assert await any_store.claim_deliveries(10, 30) == []


async def test_answers_are_recorded_under_the_latest_claim_only(any_store: TaskStore) -> None:
    task = await add(any_store, webhook_url=URL)
    _, run = await take(any_store, task)
    assert await any_store.complete(run, None)
    [stale] = await any_store.claim_deliveries(10, 0.01)
    await _expire_claims(any_store)
    [latest] = await any_store.claim_deliveries(10, 30)
    assert (stale.id, stale.attempts, latest.attempts) == (latest.id, 1, 2)
    # The first sender comes back from a stall: its answer changes nothing.
    assert await any_store.record_deliveries([answer(stale.id, stale.attempts)]) == [False]
    [row] = await any_store.deliveries_of(task.id)
    assert row.state is DeliveryState.PENDING
    assert await any_store.record_deliveries([answer(latest.id, latest.attempts)]) == [True]
    [row] = await any_store.deliveries_of(task.id)
    assert (row.state, row.status_code, row.attempts) == (DeliveryState.DELIVERED, 200, 2)
    assert row.delivered_at is not None
    # Delivered is final: a late answer of any claim is refused.
    assert await any_store.record_deliveries([answer(latest.id, latest.attempts)]) == [False]


async def test_a_failed_try_is_due_again_later_or_given_up(any_store: TaskStore) -> None:
    one, two = [await add(any_store, webhook_url=URL) for _ in range(2)]
    for task in (one, two):
        _, run = await take(any_store, task)
        assert await any_store.complete(run, None)
    claimed = {d.task_id: d for d in await any_store.claim_deliveries(10, 30)}
    again = answer(
        claimed[one.id].id,
        1,
        delivered=False,
        status_code=503,
        error="answered HTTP 503",
        retry_in_seconds=60,
    )
    give_up = answer(claimed[two.id].id, 1, delivered=False, status_code=None, error="refused")
    assert await any_store.record_deliveries([again, give_up]) == [True, True]
    [waiting] = await any_store.deliveries_of(one.id)
    assert (waiting.state, waiting.status_code, waiting.error) == (
        DeliveryState.PENDING,
        503,
        "answered HTTP 503",
    )
    assert waiting.next_attempt_at - waiting.created_at > timedelta(seconds=50)
    [given_up] = await any_store.deliveries_of(two.id)
    assert (given_up.state, given_up.error) == (DeliveryState.FAILED, "refused")
    assert await any_store.claim_deliveries(10, 30) == []  # one is not due, one is over


async def _expire_claims(store: TaskStore) -> None:
    assert isinstance(store, SqlTaskStore)
    async with store.engine.begin() as conn:
        await conn.execute(update(deliveries).values(claimed_until=None))
