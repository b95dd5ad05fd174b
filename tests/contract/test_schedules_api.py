"""Schedules over HTTP, in both modes: what a user creates, sees, changes and gets."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.contract.http import YEARLY, wait_for

TASK = {"name": "echo", "payload": {"hello": "schedule"}}


async def create(client: httpx.AsyncClient, expected: int = 201, **body: Any) -> dict[str, Any]:
    answer = await client.post("/schedules", json={"task": TASK} | body)
    assert answer.status_code == expected, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def ticks_of(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/schedules/{name}/tasks")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def until_ticks(client: httpx.AsyncClient, name: str, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        items = await ticks_of(client, name)
        if len(items) >= count:
            return items
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} made {len(items)} tasks, not {count}")


async def test_an_every_second_schedule_makes_a_task_per_tick(client: httpx.AsyncClient) -> None:
    made = await create(client, name="heartbeat", every_seconds=1)
    assert made["source"] == "api"
    assert made["catch_up"] == "once"
    runs = [datetime.fromisoformat(t) for t in made["next_runs"]]
    assert len(runs) == 5
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(runs))
    items = await until_ticks(client, "heartbeat", 2)
    ticks = [datetime.fromisoformat(item["tick_at"]) for item in items]
    assert ticks[0] > ticks[1]  # newest first, one second apart
    assert (ticks[0] - ticks[1]).total_seconds() % 1 == 0
    done = await wait_for(client, items[-1]["task"]["id"], "done")
    assert done["result"] == {"hello": "schedule"}
    assert done["created_by"] == "schedule:heartbeat"
    shown = (await client.get("/schedules/heartbeat")).json()
    assert shown["last_run_at"] is not None
    assert shown["last_task_id"] is not None
    assert (await client.delete("/schedules/heartbeat")).status_code == 204
    assert (await client.get("/schedules/heartbeat")).status_code == 404


async def test_a_paused_schedule_makes_nothing_until_resumed(client: httpx.AsyncClient) -> None:
    await create(client, name="paused", every_seconds=1, paused=True)
    shown = (await client.get("/schedules/paused")).json()
    assert (shown["paused"], shown["next_run_at"], shown["next_runs"]) == (True, None, [])
    await asyncio.sleep(1.3)
    assert await ticks_of(client, "paused") == []
    resumed = await client.post("/schedules/paused/resume")
    assert resumed.status_code == 200
    assert resumed.json()["paused"] is False
    assert datetime.fromisoformat(resumed.json()["next_run_at"]) > datetime.now(UTC)
    await until_ticks(client, "paused", 1)
    paused = await client.post("/schedules/paused/pause")
    assert paused.json()["paused"] is True
    await client.delete("/schedules/paused")


async def test_a_schedule_is_listed_and_changed(client: httpx.AsyncClient) -> None:
    await create(client, name="nightly", cron="30 2 * * *", tz="Europe/Berlin", catch_up="skip")
    await create(client, name="hourly", cron="@hourly")
    listed = [item for item in (await client.get("/schedules")).json() if item["source"] == "api"]
    assert [item["name"] for item in listed] == ["hourly", "nightly"]
    nightly = listed[1]
    first = datetime.fromisoformat(nightly["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (first.hour, first.minute) == (2, 30)  # (03:00 only on a spring-forward day)
    changed = await client.patch(
        "/schedules/nightly", json={"every_seconds": 3600, "task": {"payload": 2}}
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["cron"], body["every_seconds"], body["task"]) == (None, 3600, {"payload": 2})
    assert datetime.fromisoformat(body["next_run_at"]).timestamp() % 3600 == 0
    for name in ("nightly", "hourly"):
        assert (await client.delete(f"/schedules/{name}")).status_code == 204


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "bad", "cron": "61 * * * *"}, "cron expression"),
        ({"name": "bad", "cron": "@daily", "tz": "Mars/Olympus"}, "time zone"),
        ({"name": "bad", "every_seconds": 0.1}, "every_seconds"),
        ({"name": "bad"}, "exactly one"),
        ({"name": "bad", "every_seconds": 5, "catch_up": "sometimes"}, "catch_up"),
        ({"name": "bad name!", "every_seconds": 5}, "name"),
        ({"name": "bad", "every_seconds": 5, "task": {"payload": 1, "run_at": "x"}}, "run_at"),
    ],
)
async def test_what_cannot_be_scheduled_gets_a_422(
    client: httpx.AsyncClient, body: dict[str, Any], where: str
) -> None:
    answer = await client.post("/schedules", json={"task": TASK} | body)
    assert answer.status_code == 422, answer.text
    assert where in answer.text


async def test_names_are_unique_and_unknown_ones_are_404(client: httpx.AsyncClient) -> None:
    await create(client, name="once", every_seconds=60)
    await create(client, 409, name="once", every_seconds=30)
    for method, path in [
        ("GET", "/schedules/nope"),
        ("PATCH", "/schedules/nope"),
        ("DELETE", "/schedules/nope"),
        ("POST", "/schedules/nope/pause"),
        ("GET", "/schedules/nope/tasks"),
    ]:
        answer = await client.request(method, path, json={} if method == "PATCH" else None)
        assert answer.status_code == 404, (method, path, answer.text)
    both = await client.patch("/schedules/once", json={"cron": "@daily", "every_seconds": 5})
    assert both.status_code == 422
    await client.delete("/schedules/once")


async def test_a_schedule_of_code_is_listed_and_may_be_paused_not_changed(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(100):  # the worker's scheduler declares it on its first tick
        answer = await client.get(f"/schedules/{YEARLY}")
        if answer.status_code == 200:
            break
        await asyncio.sleep(0.05)
    shown = answer.json()
    assert (shown["source"], shown["cron"], shown["tz"]) == ("code", "@yearly", "Europe/Berlin")
    assert shown["task"] == {"payload": {"happy": "new year"}, "name": YEARLY}
    new_year = datetime.fromisoformat(shown["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (new_year.month, new_year.day, new_year.hour, new_year.minute) == (1, 1, 0, 0)
    refused = await client.patch(f"/schedules/{YEARLY}", json={"cron": "@daily"})
    assert refused.status_code == 409
    assert "declared in code" in refused.json()["detail"]
    assert (await client.post(f"/schedules/{YEARLY}/pause")).json()["paused"] is True
    assert (await client.post(f"/schedules/{YEARLY}/resume")).json()["paused"] is False
