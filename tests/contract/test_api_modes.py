"""The core HTTP scenarios, run in both modes Krolik ships.

* production: PostgreSQL store, RabbitMQ broker, the app's relay and a started worker
  (the ``api`` and ``make_worker`` fixtures of ``tests/conftest.py``);
* embedded: what ``krolik dev`` runs, ``Embedded`` (SQLite, in-process broker, worker,
  rescuer) under the same app.

The tests only speak HTTP, so a scenario that passes in one mode and not in the other
is a difference between the stores or the brokers behind it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.contract.http import FAILING, FAILING_ATTEMPTS, submit, wait_for


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_the_seed_request_is_processed(client: httpx.AsyncClient) -> None:
    created = await submit(client, payload="x")
    assert created["status"] == "pending"
    done = await wait_for(client, created["task_id"], "done")
    assert done["result"] == "Processed 'x'"
    assert done["payload"] == "x"
    assert done["attempts"] == 1


async def test_a_named_task_runs_its_handler(client: httpx.AsyncClient) -> None:
    payload = {"text": "żółw 🐇", "n": [1, 2.5, None]}
    created = await submit(client, name="echo", payload=payload)
    done = await wait_for(client, created["task_id"], "done")
    assert done["name"] == "echo"
    assert done["result"] == payload


async def test_a_number_is_a_payload_and_a_result_like_any_other(
    client: httpx.AsyncClient,
) -> None:
    created = await submit(client, name="echo", payload=42)
    done = await wait_for(client, created["task_id"], "done")
    assert (done["payload"], done["result"]) == (42, 42)


async def test_a_delayed_task_runs_after_its_delay(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    created = await submit(client, name="echo", payload="later", delay_seconds=1.5)
    run_at = stamp(created["run_at"])
    assert run_at >= before + timedelta(seconds=1.5)
    assert (await client.get(f"/tasks/{created['task_id']}")).json()["status"] == "pending"
    done = await wait_for(client, created["task_id"], "done")
    assert stamp(done["started_at"]) >= run_at
    assert done["result"] == "later"


async def test_an_idempotency_key_creates_one_task(client: httpx.AsyncClient) -> None:
    first = await submit(client, payload="once", idempotency_key="order-17")
    again = await submit(client, 200, idempotency_key="order-17", payload="once")
    assert again["task_id"] == first["task_id"]
    assert again["payload"] == "once"
    listed = (await client.get("/tasks", params={"limit": 100})).json()["items"]
    assert [task["id"] for task in listed].count(first["task_id"]) == 1


async def test_an_idempotency_key_sent_with_another_body_is_refused(
    client: httpx.AsyncClient,
) -> None:
    first = await submit(client, payload="once", idempotency_key="order-18")
    response = await client.post(
        "/tasks/", json={"payload": "twice", "idempotency_key": "order-18"}
    )
    assert response.status_code == 409, response.text
    assert "order-18" in response.json()["detail"]
    assert "different request body" in response.json()["detail"]
    batch = await client.post(
        "/tasks/batch",
        json={
            "tasks": [
                {"payload": "new", "idempotency_key": "order-19"},
                {"payload": "twice", "idempotency_key": "order-18"},
            ]
        },
    )
    assert batch.status_code == 409, batch.text
    listed = (await client.get("/tasks", params={"limit": 100})).json()["items"]
    assert [task["idempotency_key"] for task in listed] == ["order-18"], "the batch wrote nothing"
    assert (await client.get(f"/tasks/{first['task_id']}")).json()["payload"] == "once"


async def test_a_pending_task_can_be_cancelled(client: httpx.AsyncClient) -> None:
    created = await submit(client, payload="never", delay_seconds=60)
    response = await client.post(f"/tasks/{created['task_id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert (await client.get(f"/tasks/{created['task_id']}")).json()["status"] == "cancelled"
    assert (await client.post(f"/tasks/{created['task_id']}/cancel")).status_code == 409


async def test_a_failing_task_is_retried_then_failed_and_can_be_retried(
    client: httpx.AsyncClient,
) -> None:
    created = await submit(client, name=FAILING, payload=7)
    task_id = created["task_id"]
    failed = await wait_for(client, task_id, "failed")
    assert failed["attempts"] == FAILING_ATTEMPTS
    assert failed["max_attempts"] == FAILING_ATTEMPTS
    assert failed["error"] == "RuntimeError: cannot handle 7"
    assert "RuntimeError" in failed["traceback"]

    listed = (await client.get("/tasks", params={"status": "failed"})).json()["items"]
    assert [task["id"] for task in listed] == [task_id]

    response = await client.post(f"/tasks/{task_id}/retry")
    assert response.status_code == 200, response.text
    retried = response.json()
    assert (retried["status"], retried["attempts"], retried["error"]) == ("pending", 0, None)
    again = await wait_for(client, task_id, "failed")
    assert again["attempts"] == FAILING_ATTEMPTS


async def test_an_unknown_task_is_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/987654321")
    assert response.status_code == 404
    assert response.json()["detail"]
    assert (await client.post("/tasks/987654321/cancel")).status_code == 404
    assert (await client.post("/tasks/987654321/retry")).status_code == 404


async def test_workers_are_listed_with_what_they_serve(client: httpx.AsyncClient) -> None:
    response = await client.get("/workers")
    assert response.status_code == 200, response.text
    [worker] = response.json()
    assert worker["queues"] == ["default"]
    assert {"echo", "default", FAILING} <= set(worker["handlers"])
    assert worker["alive"] is True
    assert worker["concurrency"] >= 1
    assert stamp(worker["expires_at"]) > stamp(worker["last_seen_at"])
    assert (await client.get("/workers", params={"all": "true"})).json()[0]["id"] == worker["id"]


async def test_a_pending_task_says_why_it_waits(client: httpx.AsyncClient) -> None:
    later = await submit(client, payload=1, delay_seconds=600)
    nobody = await submit(client, payload=2, name="contract.nobody_has_this")
    elsewhere = await submit(client, payload=3, queue="elsewhere")

    async def reason(task: dict[str, Any]) -> str | None:
        detail = (await client.get(f"/tasks/{task['task_id']}")).json()
        assert detail["status"] == "pending", detail
        value: str | None = detail["waiting_reason"]
        return value

    assert (await reason(later)).startswith("scheduled: due at ")
    assert await reason(nobody) == (
        "no live worker of queue 'default' has a handler named 'contract.nobody_has_this'"
    )
    assert await reason(elsewhere) == "no live worker consumes queue 'elsewhere'"
    done = await submit(client, payload=4)
    finished = await wait_for(client, done["task_id"], "done")
    assert finished["waiting_reason"] is None


async def test_krolik_dev_serves_the_interactive_docs_and_production_only_with_debug(
    client: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:
    embedded = "embedded" in request.node.callspec.id
    for path in ("/docs", "/openapi.json"):
        response = await client.get(path)
        assert response.status_code == (200 if embedded else 404), (path, response.text)
