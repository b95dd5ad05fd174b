"""Snooze and expiry, end to end over HTTP in both modes, and the store's statements.

A handler's ``Snooze`` sends its task back to wait without using an attempt (a task of
one attempt snoozes as often as it likes); a task not started by its ``expires_at``
ends ``expired`` and its handler never runs.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from krolik.snooze import Snooze
from krolik.states import AttemptOutcome, TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, RunRef
from tests.contract.http import RUNS, SLEEPS, SNOOZES, submit, wait_for
from tests.contract.test_transitions import age

HANDLERS = {"echo": 1}


@pytest.mark.parametrize("returned", [False, True], ids=["raised", "returned"])
async def test_a_snoozed_task_runs_again_without_using_an_attempt(
    client: httpx.AsyncClient, returned: bool
) -> None:
    payload = {"times": 2, "seconds": 0.2, "return": returned}
    created = await submit(client, name=SNOOZES, payload=payload)
    done = await wait_for(client, created["task_id"], "done")
    assert done["result"] == {"runs": 3, "attempt": 1}
    assert (done["attempts"], done["max_attempts"]) == (1, 1)
    attempts = (await client.get(f"/tasks/{created['task_id']}/attempts")).json()["items"]
    assert [item["outcome"] for item in attempts] == ["snoozed", "snoozed", "succeeded"]
    assert [item["attempt"] for item in attempts] == [1, 1, 1]
    assert [item["run"] for item in attempts] == [1, 2, 3]
    # Each run started at least the snooze after the previous one ended.
    for before, after in itertools.pairwise(attempts):
        gap = datetime.fromisoformat(after["started_at"]) - datetime.fromisoformat(
            before["finished_at"]
        )
        assert gap >= timedelta(seconds=0.2)
    RUNS.pop(created["task_id"], None)


async def test_a_task_not_started_by_its_expiry_ends_expired_and_never_runs(
    client: httpx.AsyncClient,
) -> None:
    created = await submit(client, name=SLEEPS, payload=0, delay_seconds=0.6, expires_in=0.3)
    assert created["expires_at"] is not None
    expired = await wait_for(client, created["task_id"], "expired")
    assert expired["attempts"] == 0
    assert expired["started_at"] is None
    assert expired["finished_at"] is not None
    assert "expired" in expired["error"]
    assert (await client.get(f"/tasks/{created['task_id']}/attempts")).json()["items"] == []


async def test_a_task_started_in_time_is_not_expired(client: httpx.AsyncClient) -> None:
    created = await submit(client, name="echo", payload=1, expires_in=60)
    done = await wait_for(client, created["task_id"], "done")
    assert done["result"] == 1


async def test_expires_at_and_expires_in_are_checked(client: httpx.AsyncClient) -> None:
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    both = await client.post("/tasks/", json={"payload": 1, "expires_at": at, "expires_in": 5})
    assert both.status_code == 422
    assert "not both" in both.text
    for bad in (0, -1, "soon"):
        answer = await client.post("/tasks/", json={"payload": 1, "expires_in": bad})
        assert answer.status_code == 422, answer.text
    created = await submit(client, name=SLEEPS, payload=0, delay_seconds=30, expires_at=at)
    assert datetime.fromisoformat(created["expires_at"]) == datetime.fromisoformat(at)
    await client.post(f"/tasks/{created['task_id']}/cancel")


async def test_an_expired_task_can_be_retried_and_then_runs(client: httpx.AsyncClient) -> None:
    created = await submit(client, name="echo", payload="again", delay_seconds=0.5, expires_in=0.1)
    await wait_for(client, created["task_id"], "expired")
    retried = await client.post(f"/tasks/{created['task_id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["expires_at"] is None
    done = await wait_for(client, created["task_id"], "done")
    assert done["result"] == "again"


# -- the store's statements -------------------------------------------------------------
async def test_snooze_puts_the_run_back_with_its_attempt_not_counted(
    any_store: TaskStore,
) -> None:
    [made] = await any_store.enqueue([NewTask(name="echo", queue="default", payload=1)])
    claimed = await any_store.claim(made.task.id, "worker-a", 30, HANDLERS)
    assert claimed is not None
    assert claimed.attempts == 1
    run = RunRef.of(claimed)
    before = datetime.now(UTC)
    assert await any_store.snooze(run, 30) is TaskStatus.PENDING
    task = await any_store.get(made.task.id)
    assert task is not None
    assert (task.status, task.attempts, task.worker_id) == (TaskStatus.PENDING, 0, None)
    assert task.run_at >= before + timedelta(seconds=29)
    # The run is over: the same run cannot snooze, complete or fail the task again.
    assert await any_store.snooze(run, 0) is None
    assert not await any_store.complete(run, "late")
    [attempt] = await any_store.attempts_of(task.id)
    assert (attempt.outcome, attempt.attempt, attempt.error) == (AttemptOutcome.SNOOZED, 1, None)
    assert attempt.retry_at == task.run_at
    # Not due yet: no claim.
    assert await any_store.claim(task.id, "worker-b", 30, HANDLERS) is None


async def test_a_snooze_of_a_run_asked_to_stop_ends_it_cancelled(any_store: TaskStore) -> None:
    [made] = await any_store.enqueue([NewTask(name="echo", queue="default", payload=1)])
    claimed = await any_store.claim(made.task.id, "worker-a", 30, HANDLERS)
    assert claimed is not None
    await any_store.cancel(claimed.id)
    assert await any_store.snooze(RunRef.of(claimed), 5) is TaskStatus.CANCELLED


async def test_an_overdue_task_is_never_claimed_and_expires(any_store: TaskStore) -> None:
    [made] = await any_store.enqueue(
        [NewTask(name="echo", queue="default", payload=1, expires_in_seconds=0.05)]
    )
    [later] = await any_store.enqueue(
        [NewTask(name="echo", queue="default", payload=2, expires_in_seconds=3600)]
    )
    assert made.task.expires_at is not None
    await asyncio.sleep(0.1)
    assert await any_store.claim(made.task.id, "worker-a", 30, HANDLERS) is None
    expired = await any_store.expire_overdue(100)
    assert [task.id for task in expired] == [made.task.id]
    assert expired[0].status is TaskStatus.EXPIRED
    assert expired[0].finished_at is not None
    assert await any_store.expire_overdue(100) == []  # once only
    # The other one is not overdue and is claimed as usual.
    assert await any_store.claim(later.task.id, "worker-a", 30, HANDLERS) is not None


async def test_expiry_leaves_running_and_finished_tasks_alone(any_store: TaskStore) -> None:
    made = await any_store.enqueue(
        [NewTask(name="echo", queue="default", payload=i, expires_in_seconds=60) for i in (1, 2)]
    )
    running = await any_store.claim(made[0].task.id, "worker-a", 30, HANDLERS)
    assert running is not None
    done = await any_store.claim(made[1].task.id, "worker-a", 30, HANDLERS)
    assert done is not None
    assert await any_store.complete(RunRef.of(done), "ok")
    past = datetime.now(UTC) - timedelta(minutes=1)
    for enqueued in made:
        await age(any_store, enqueued.task.id, expires_at=past)
    assert await any_store.expire_overdue(100) == []
    assert await any_store.expire_overdue(100, [running.id, done.id]) == []


def test_a_snooze_is_bounded() -> None:
    assert Snooze(2.5).seconds == 2.5
    for bad in (-1, float("nan"), float("inf"), 10**9):
        with pytest.raises(ValueError, match="snooze lasts"):
            Snooze(bad)


async def test_an_expired_task_with_a_webhook_gets_its_delivery(any_store: TaskStore) -> None:
    [made] = await any_store.enqueue(
        [
            NewTask(
                name="echo",
                queue="default",
                payload=1,
                expires_in_seconds=60,
                webhook_url="https://hooks.example.com/ended",
            )
        ]
    )
    await age(any_store, made.task.id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert [task.id for task in await any_store.expire_overdue(10)] == [made.task.id]
    [delivery] = await any_store.deliveries_of(made.task.id)
    assert delivery.task_status is TaskStatus.EXPIRED
    assert delivery.url == "https://hooks.example.com/ended"
