"""Unique tasks over HTTP, in both modes: a duplicate gets the holder back with 200, a
replace debounces, and what cannot be unique is a 422."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.contract.http import SLEEPS, submit, wait_for


async def test_a_duplicate_gets_the_pending_task_back(client: httpx.AsyncClient) -> None:
    body = {"name": SLEEPS, "payload": 0, "delay_seconds": 30, "unique_key": "nightly-42"}
    first = await submit(client, **body)
    again = await submit(client, 200, **body)
    assert again["id"] == first["id"]
    assert first["unique_key"] == "nightly-42"
    await client.post(f"/tasks/{first['id']}/cancel")


async def test_the_key_can_come_from_payload_fields(client: httpx.AsyncClient) -> None:
    one = {"user": 7, "at": "09:00"}
    same_user = {"user": 7, "at": "09:05"}
    first = await submit(client, name=SLEEPS, payload=one, delay_seconds=30, unique_fields=["user"])
    assert first["unique_key"].startswith("sha256:")
    again = await submit(
        client, 200, name=SLEEPS, payload=same_user, delay_seconds=30, unique_fields=["user"]
    )
    other = await submit(
        client, name=SLEEPS, payload={"user": 8}, delay_seconds=30, unique_fields=["user"]
    )
    assert again["id"] == first["id"]
    assert other["id"] != first["id"]
    for task in (first, other):
        await client.post(f"/tasks/{task['id']}/cancel")


async def test_a_window_holds_the_key_after_the_task_is_done(client: httpx.AsyncClient) -> None:
    body = {"name": "echo", "payload": {"mail": "welcome"}, "unique_for": 60}
    first = await submit(client, **body)
    await wait_for(client, first["id"], "done")
    again = await submit(client, 200, **body)
    assert again["id"] == first["id"]
    assert again["status"] == "done"
    until = datetime.fromisoformat(again["unique_until"])
    assert until > datetime.now(UTC) + timedelta(seconds=50)


async def test_replace_debounces_a_pending_task(client: httpx.AsyncClient) -> None:
    first = await submit(
        client, name="echo", payload={"v": 1}, delay_seconds=0.6, unique_key="sync"
    )
    second = await submit(
        client,
        200,
        name="echo",
        payload={"v": 2},
        delay_seconds=0.6,
        unique_key="sync",
        on_duplicate="replace",
    )
    assert second["id"] == first["id"]
    assert second["payload"] == {"v": 2}
    assert second["run_at"] > first["run_at"]
    done = await wait_for(client, first["id"], "done")
    assert done["result"] == {"v": 2}  # it ran once, with the latest payload
    assert done["attempts"] == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"unique_key": "a", "idempotency_key": "b"}, "not both"),
        ({"unique_key": "a", "unique_fields": ["x"], "payload": {"x": 1}}, "not both"),
        ({"unique_fields": ["x"], "payload": [1]}, "object payload"),
        ({"unique_fields": ["y"], "payload": {"x": 1}}, "no field 'y'"),
        ({"on_duplicate": "replace"}, "need a unique task"),
        ({"unique_running": True}, "need a unique task"),
        ({"unique_for": 0}, "greater than 0"),
        ({"unique_key": ""}, "at least 1"),
        ({"unique_key": "a", "on_duplicate": "merge"}, "replace"),
    ],
)
async def test_what_cannot_be_unique_gets_a_422(
    client: httpx.AsyncClient, body: dict[str, object], message: str
) -> None:
    answer = await client.post("/tasks/", json={"payload": 1} | body)
    assert answer.status_code == 422, answer.text
    assert message in answer.text
