"""A task processing for longer than APP__METRICS__STUCK_AFTER_SECONDS counts as
stuck, in /metrics (krolik_stuck_tasks, which KrolikStuckTasks alerts on) and in
GET /queues, and stops counting once it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from krolik.registry import Registry
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from tests.conftest import wait_for_task
from tests.ops.conftest import scrape, value, wait_until

STUCK_AFTER = 0.3
DEFAULT = {"queue": "default"}


async def stuck_in_metrics(api: httpx.AsyncClient) -> float | None:
    return value(await scrape(api), "krolik_stuck_tasks", DEFAULT)


async def stuck_in_queues(api: httpx.AsyncClient) -> int:
    response = await api.get("/queues")
    assert response.status_code == 200, response.text
    (queue,) = [item for item in response.json() if item["queue"] == "default"]
    return int(queue["stuck"])


async def test_a_task_running_too_long_is_stuck_until_it_ends(
    make_api: Callable[..., Any],
    make_settings: Callable[..., Settings],
    store: TaskStore,
    make_broker: Callable[..., Any],
    make_worker: Callable[..., Any],
) -> None:
    settings = make_settings(metrics={"stuck_after_seconds": STUCK_AFTER, "refresh_seconds": 0})
    api = await make_api(settings, store=store, broker=make_broker())
    registry = Registry()
    started, release = asyncio.Event(), asyncio.Event()

    @registry.task(name="ops.hang")
    async def hang(payload: Any) -> str:
        started.set()
        await release.wait()
        return "released"

    await make_worker(registry)
    response = await api.get("/metrics")
    assert f"longer than {STUCK_AFTER:g} s" in response.text  # the HELP names the threshold
    assert await stuck_in_metrics(api) in (None, 0)

    task = await create_hanging_task(api)
    await asyncio.wait_for(started.wait(), 10)
    samples = await scrape(api)
    scraped_by = datetime.now(UTC)
    running = await store.get(task["id"])
    assert running.status is TaskStatus.PROCESSING
    assert value(samples, "krolik_tasks", {**DEFAULT, "status": "processing"}) == 1
    if scraped_by < running.started_at + timedelta(seconds=STUCK_AFTER):
        # The scrape ended before the threshold: it must not have counted it yet.
        assert value(samples, "krolik_stuck_tasks", DEFAULT) == 0

    await wait_until(
        lambda: _equals(stuck_in_metrics(api), 1), what="/metrics shows the stuck task"
    )
    assert await stuck_in_queues(api) == 1
    assert value(await scrape(api), "krolik_stuck_tasks", DEFAULT) == 1

    release.set()
    await wait_for_task(store, task["id"], TaskStatus.DONE)
    await wait_until(lambda: _equals(stuck_in_metrics(api), 0), what="no stuck task once done")
    assert await stuck_in_queues(api) == 0


async def create_hanging_task(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.post("/tasks/", json={"name": "ops.hang", "payload": None})
    assert response.status_code == 201, response.text
    return response.json()


async def _equals(read: Any, expected: float) -> bool:
    return await read == expected
