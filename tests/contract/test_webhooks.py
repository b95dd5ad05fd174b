"""Webhooks over HTTP, in both modes: a task that names a URL is POSTed there, signed,
when it ends; every delivery is listed; a URL the allow-list refuses is a 422."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from krolik.builtin_tasks import builtin_registry
from krolik.webhooks import DELIVERY_HEADER, EVENT_HEADER, verify
from tests.conftest import WEBHOOK_KEY_ID, WEBHOOK_SECRET
from tests.contract.http import FAILING, FAILING_ATTEMPTS, embedded_app, submit, wait_for
from tests.support.receiver import Receiver, receiving

SECRETS = {WEBHOOK_KEY_ID: WEBHOOK_SECRET}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as the_receiver:
        yield the_receiver


async def deliveries(client: httpx.AsyncClient, task_id: int) -> list[dict]:
    response = await client.get(f"/tasks/{task_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict] = response.json()["items"]
    return items


async def delivered(client: httpx.AsyncClient, task_id: int, timeout: float = 10) -> list[dict]:
    """The task's deliveries once one is recorded delivered (polled, as wait_for does)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        items = await deliveries(client, task_id)
        if any(item["state"] == "delivered" for item in items):
            return items
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id}: {await deliveries(client, task_id)}")


async def test_a_done_task_is_posted_signed_with_its_record(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await submit(client, payload="hello", webhook_url=receiver.url("/done"))
    assert created["webhook_url"] == receiver.url("/done")
    [call] = await receiver.wait_for(1)
    assert call.path == "/done"
    verify(call.body, call.headers, SECRETS)  # raises unless signed by the test key
    body = call.json
    assert body["event"] == call.headers[EVENT_HEADER.lower()] == "task.ended"
    assert body["task"]["id"] == created["task_id"]
    assert body["task"]["status"] == "done"
    assert body["task"]["payload"] == "hello"
    assert body["delivery_id"] == int(call.headers[DELIVERY_HEADER.lower()])
    [item] = await delivered(client, created["task_id"])
    assert item["id"] == body["delivery_id"]
    assert (item["url"], item["task_status"], item["attempts"]) == (
        receiver.url("/done"),
        "done",
        1,
    )
    assert (item["status_code"], item["error"], item["next_attempt_at"]) == (200, None, None)
    assert item["delivered_at"] is not None
    assert item["seconds"] >= 0


async def test_a_task_that_fails_is_posted_once_at_the_end_not_per_retry(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await submit(client, name=FAILING, payload=1, webhook_url=receiver.url())
    task = await wait_for(client, created["task_id"], "failed")
    assert task["attempts"] == FAILING_ATTEMPTS
    [item] = await delivered(client, created["task_id"])
    assert item["task_status"] == "failed"
    [call] = receiver.calls
    assert call.json["task"]["status"] == "failed"
    assert "cannot handle 1" in call.json["task"]["error"]
    assert call.json["task"]["traceback"]


async def test_a_cancelled_task_is_posted(client: httpx.AsyncClient, receiver: Receiver) -> None:
    created = await submit(client, payload=1, delay_seconds=3600, webhook_url=receiver.url())
    response = await client.post(f"/tasks/{created['task_id']}/cancel")
    assert response.status_code == 200, response.text
    [call] = await receiver.wait_for(1)
    assert call.json["task"]["status"] == "cancelled"


async def test_a_failing_endpoint_is_tried_again_until_it_answers(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answers = [500, 503]
    created = await submit(client, payload=1, webhook_url=receiver.url())
    calls = await receiver.wait_for(3)
    assert len({call.headers[DELIVERY_HEADER.lower()] for call in calls}) == 1  # one delivery
    for call in calls:
        verify(call.body, call.headers, SECRETS)
    [item] = await delivered(client, created["task_id"])
    assert (item["attempts"], item["status_code"]) == (3, 200)


async def test_no_url_no_call(client: httpx.AsyncClient) -> None:
    created = await submit(client, payload=1)
    await wait_for(client, created["task_id"], "done")
    assert created["webhook_url"] is None
    assert await deliveries(client, created["task_id"]) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://10.0.0.7/hook", "not in APP__WEBHOOKS__ALLOWED_HOSTS"),
        ("http://169.254.169.254/latest/meta-data", "not in APP__WEBHOOKS__ALLOWED_HOSTS"),
        ("https://hooks.example.com/x", "not in APP__WEBHOOKS__ALLOWED_HOSTS"),
        ("file:///etc/passwd", "http:// or https://"),
    ],
)
async def test_a_url_the_allow_list_refuses_is_422_and_nothing_is_created(
    client: httpx.AsyncClient, url: str, message: str
) -> None:
    response = await client.post("/tasks/", json={"payload": 1, "webhook_url": url})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    batch = await client.post(
        "/tasks/batch",
        json={"tasks": [{"payload": 1}, {"payload": 2, "webhook_url": url}]},
    )
    assert batch.status_code == 422, batch.text
    listed = await client.get("/tasks")
    assert listed.json()["items"] == []


async def test_a_url_that_is_not_a_string_is_422(client: httpx.AsyncClient) -> None:
    for bad in (7, "", "x" * 2049):
        response = await client.post("/tasks/", json={"payload": 1, "webhook_url": bad})
        assert response.status_code == 422, response.text


async def test_deliveries_of_a_missing_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/999999/deliveries")
    assert response.status_code == 404


async def test_a_queue_s_webhook_serves_its_tasks_that_name_none(
    sqlite_template: Path, tmp_path: Path, run_id: str, receiver: Receiver
) -> None:
    """APP__WEBHOOKS__QUEUE_URLS (embedded here: the rule is the submitter's, one for all)."""
    webhooks = {"queue_urls": {"hooked": receiver.url("/queue")}}
    async with embedded_app(
        sqlite_template, tmp_path, run_id, builtin_registry, webhooks=webhooks
    ) as client:
        hooked = await submit(client, payload=1, queue="hooked", delay_seconds=3600)
        own = await submit(
            client, payload=2, queue="hooked", delay_seconds=3600, webhook_url=receiver.url()
        )
        plain = await submit(client, payload=3, delay_seconds=3600)
        assert hooked["webhook_url"] == receiver.url("/queue")
        assert own["webhook_url"] == receiver.url()
        assert plain["webhook_url"] is None
        for created in (hooked, own, plain):
            await client.post(f"/tasks/{created['task_id']}/cancel")
        calls = await receiver.wait_for(2)
        assert sorted(call.path for call in calls) == ["/hook", "/queue"]
