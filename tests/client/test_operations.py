"""Queues, workers, schedules, health and the change stream through the client."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from krolik_client import AsyncClient, Conflict, NotFound, TaskChange, TaskStatus

from tests.client.conftest import QUICK_RETRIES
from tests.client.handlers import nap

WEEK = 7 * 86400.0
NEW_YEAR = "0 0 1 1 *"
"""Timetables with no tick while a test runs."""


@pytest.fixture
def app(production_app: Any) -> Any:
    """The PostgreSQL mode only (reads and actions the contract tests already run in both modes)."""
    return production_app


async def test_queue_limits_pause_and_resume(krolik: AsyncClient) -> None:
    changed = await krolik.change_queue("reports", max_running=2, rate_limit="10/minute")
    assert (changed.limits.max_running, changed.limits.rate_limit) == (2, "10/minute")
    lifted = await krolik.change_queue("reports", max_running=None)
    assert lifted.limits.max_running is None
    assert lifted.limits.rate_limit == "10/minute"  # what was not given stays
    urgent = await krolik.change_queue("reports", default_priority=5)
    assert urgent.limits.default_priority == 5
    assert (await krolik.pause_queue("reports")).limits.paused
    assert (await krolik.queue("reports")).limits.paused
    assert not (await krolik.resume_queue("reports")).limits.paused
    names = [queue.queue for queue in await krolik.queues()]
    assert {"default", "reports"} <= set(names)
    with pytest.raises(TypeError, match="unknown queue settings"):
        await krolik.change_queue("reports", max_runing=3)  # type: ignore[call-arg]


async def test_workers_list_what_they_serve(krolik: AsyncClient) -> None:
    workers = await krolik.workers()
    assert any("client.nap" in worker.handlers and worker.alive for worker in workers)
    assert len(await krolik.workers(include_dead=True)) >= len(workers)


async def test_a_schedule_from_creation_to_deletion(krolik: AsyncClient) -> None:
    created = await krolik.create_schedule("weekly-nap", nap, 0.0, every=WEEK, queue="naps")
    assert (created.source, created.every_seconds, created.task["name"]) == (
        "api",
        WEEK,
        "client.nap",
    )
    assert created.task["queue"] == "naps"
    with pytest.raises(Conflict):
        await krolik.create_schedule("weekly-nap", nap, 0.0, every=WEEK)
    assert "weekly-nap" in [schedule.name for schedule in await krolik.schedules()]
    changed = await krolik.change_schedule("weekly-nap", cron=NEW_YEAR, tz="Europe/Berlin")
    assert (changed.cron, changed.every_seconds, changed.tz) == (NEW_YEAR, None, "Europe/Berlin")
    retasked = await krolik.change_schedule("weekly-nap", task=nap, payload=1.5)
    assert retasked.task["payload"] == 1.5
    assert (await krolik.pause_schedule("weekly-nap")).paused
    assert (await krolik.schedule("weekly-nap")).next_run_at is None
    assert not (await krolik.resume_schedule("weekly-nap")).paused
    assert (await krolik.schedule_ticks("weekly-nap")).items == []
    await krolik.delete_schedule("weekly-nap")
    with pytest.raises(NotFound, match="weekly-nap"):
        await krolik.schedule("weekly-nap")


async def test_health_readiness_and_metrics(krolik: AsyncClient) -> None:
    assert (await krolik.health()).status == "ok"
    ready = await krolik.ready()
    assert ready.status == "ok", ready.checks
    assert "krolik_" in await krolik.metrics()


async def test_changes_stream_the_tasks_of_a_name(served: str) -> None:
    async with AsyncClient(served, retries=QUICK_RETRIES) as client:
        seen: list[TaskChange] = []

        async def follow() -> None:
            async with contextlib.aclosing(client.changes(name="client.nap")) as changes:
                async for change in changes:
                    if isinstance(change, TaskChange):
                        seen.append(change)
                        if change.task.status is TaskStatus.DONE:
                            return

        following = asyncio.create_task(follow())
        await asyncio.sleep(0.3)  # connected by then (the stream itself says nothing)
        handle = await client.submit(nap, 0.3)
        await asyncio.wait_for(following, 10)
    assert {change.task.id for change in seen} == {handle.id}
    assert seen[-1].kind == "finished"
