"""Metrics move as the tasks do: real API (its relay included), real worker, real
PostgreSQL and RabbitMQ.

The worker reports to its own ``Metrics`` (as `krolik worker` does), read with
``registry.get_sample_value``; the API's counters and the store gauges are read
from its /metrics, parsed with prometheus_client's parser. Every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from krolik.metrics import Metrics
from krolik.registry import Registry, TaskContext
from krolik.relay import OutboxRelay
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from tests.conftest import wait_for_task
from tests.ops.conftest import scrape, value, wait_until

DEFAULT = "default"


async def create(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await api.post("/tasks/", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def by_task(name: str, queue: str = DEFAULT) -> dict[str, str]:
    return {"name": name, "queue": queue}


async def test_counters_histograms_and_gauges_follow_the_tasks(
    api: httpx.AsyncClient, store: TaskStore, make_worker: Callable[..., Any]
) -> None:
    registry = Registry()
    blocking_started = asyncio.Event()

    @registry.task(name="ops.flaky")
    async def flaky(payload: Any, context: TaskContext) -> str:
        if context.attempt < 3:
            raise RuntimeError(f"attempt {context.attempt} fails")
        return "third time lucky"

    @registry.task(name="ops.doomed")
    async def doomed(payload: Any) -> None:
        raise RuntimeError("always fails")

    @registry.task(name="ops.blocking")
    async def blocking(payload: Any) -> None:
        blocking_started.set()
        await asyncio.sleep(60)

    metrics = Metrics()
    worker = await make_worker(registry, observer=metrics)

    def worker_value(name: str, labels: dict[str, str] | None = None) -> float | None:
        return metrics.registry.get_sample_value(name, labels or {})

    # 5 successes, one task failing twice then succeeding, one failing for good.
    echoes = [await create(api, name="echo", payload=i) for i in range(5)]
    flaky_task = await create(api, name="ops.flaky", payload=None)
    doomed_task = await create(api, name="ops.doomed", payload=None, max_attempts=1)
    for task in [*echoes, flaky_task]:
        await wait_for_task(store, task["id"], TaskStatus.DONE)
    assert (await store.get(flaky_task["id"])).attempts == 3
    await wait_for_task(store, doomed_task["id"], TaskStatus.FAILED)

    # One cancelled while running...
    blocked = await create(api, name="ops.blocking", payload=None)
    await asyncio.wait_for(blocking_started.wait(), 10)
    assert (await api.post(f"/tasks/{blocked['id']}/cancel")).status_code == 200
    await wait_for_task(store, blocked["id"], TaskStatus.CANCELLED)

    # ...and one cancelled while it waits for its run_at: scheduled, never started.
    delayed = await create(api, name="echo", payload="later", delay_seconds=60)
    samples = await scrape(api)
    assert value(samples, "krolik_tasks", {"queue": DEFAULT, "status": "scheduled"}) == 1
    assert value(samples, "krolik_tasks", {"queue": DEFAULT, "status": "pending"}) == 0
    assert (await api.post(f"/tasks/{delayed['id']}/cancel")).status_code == 200
    await worker.wait_for_idle()  # every run's outcome reached the observer

    # -- the worker's counters: runs, by outcome ------------------------------------------
    started = {"echo": 5, "ops.flaky": 3, "ops.doomed": 1, "ops.blocking": 1}
    for name, count in started.items():
        assert worker_value("krolik_tasks_started_total", by_task(name)) == count, name
    assert worker_value("krolik_tasks_succeeded_total", by_task("echo")) == 5
    assert worker_value("krolik_tasks_succeeded_total", by_task("ops.flaky")) == 1
    assert worker_value("krolik_tasks_retried_total", by_task("ops.flaky")) == 2
    assert worker_value("krolik_tasks_failed_total", by_task("ops.flaky")) is None
    assert worker_value("krolik_tasks_failed_total", by_task("ops.doomed")) == 1
    assert worker_value("krolik_tasks_retried_total", by_task("ops.doomed")) is None
    assert worker_value("krolik_tasks_cancelled_total", by_task("ops.blocking")) == 1
    # Cancelled while pending: no run, so no counter; only the store gauge shows it.
    assert worker_value("krolik_tasks_cancelled_total", by_task("echo")) is None
    assert worker_value("krolik_tasks_released_total", by_task("echo")) is None

    # -- the worker's histograms: one observation per run ---------------------------------
    durations = {"echo": 5, "ops.flaky": 3, "ops.doomed": 1}  # a cancelled run has none
    for name, count in durations.items():
        assert worker_value("krolik_task_duration_seconds_count", {"name": name}) == count
        assert worker_value(
            "krolik_task_duration_seconds_bucket", {"name": name, "le": "+Inf"}
        ) == (count)
    assert worker_value("krolik_task_duration_seconds_count", {"name": "ops.blocking"}) is None
    assert worker_value("krolik_task_duration_seconds_sum", {"name": "ops.doomed"}) >= 0
    for name, count in started.items():
        assert worker_value("krolik_task_queue_wait_seconds_count", {"name": name}) == count
    # The worker neither submits nor relays: nothing is counted twice.
    assert worker_value("krolik_tasks_submitted_total", by_task("echo")) is None
    assert worker_value("krolik_relay_published_total") == 0

    # -- the API's /metrics: submissions, the relay, HTTP, the store gauges ---------------
    published = 5 + 3 + 1 + 1  # every run was one message (the retries too)
    await wait_until(
        lambda: _published(api, published), what=f"the API's relay counted {published} messages"
    )
    samples = await scrape(api)
    submitted = {"echo": 6, "ops.flaky": 1, "ops.doomed": 1, "ops.blocking": 1}
    for name, count in submitted.items():
        assert value(samples, "krolik_tasks_submitted_total", by_task(name)) == count, name
    assert value(samples, "krolik_tasks_started_total", by_task("echo")) is None
    assert value(samples, "krolik_relay_publish_errors_total") == 0

    posts = sum(submitted.values())
    create_route = {"method": "POST", "route": "/tasks/"}
    assert value(samples, "krolik_http_requests_total", {**create_route, "status": "201"}) == posts
    assert value(samples, "krolik_http_request_duration_seconds_count", create_route) == posts
    assert (
        value(
            samples, "krolik_http_request_duration_seconds_bucket", {**create_route, "le": "+Inf"}
        )
        == posts
    )
    assert value(samples, "krolik_http_request_duration_seconds_sum", create_route) > 0
    cancel = {"method": "POST", "route": "/tasks/{task_id}/cancel", "status": "200"}
    assert value(samples, "krolik_http_requests_total", cancel) == 2

    finished = {"done": 6, "failed": 1, "cancelled": 2}
    for status, count in finished.items():
        labels = {"queue": DEFAULT, "status": status}
        assert value(samples, "krolik_tasks_finished_last_hour", labels) == count, status
    for status in ("pending", "scheduled", "processing"):
        assert value(samples, "krolik_tasks", {"queue": DEFAULT, "status": status}) == 0, status
    assert value(samples, "krolik_stuck_tasks", {"queue": DEFAULT}) == 0
    assert value(samples, "krolik_oldest_pending_age_seconds", {"queue": DEFAULT}) == 0
    assert value(samples, "krolik_outbox_backlog") == 0
    assert value(samples, "krolik_outbox_lag_seconds") == 0


async def _published(api: httpx.AsyncClient, expected: float) -> bool:
    return value(await scrape(api), "krolik_relay_published_total") == expected


async def test_outbox_and_backlog_gauges_while_nothing_publishes(
    make_api: Callable[..., Any],
    make_settings: Callable[..., Settings],
    store: TaskStore,
    make_broker: Callable[..., Any],
) -> None:
    settings = make_settings(relay={"enabled": False})
    api = await make_api(settings, store=store, broker=make_broker())
    due = await create(api, name="echo", payload="waits")
    await create(api, name="echo", payload="later", delay_seconds=60)

    async def lag() -> float:
        return value(await scrape(api), "krolik_outbox_lag_seconds") or 0.0

    await wait_until(lambda: _above(lag, 0.05), what="the outbox lag grows")
    samples = await scrape(api)
    assert value(samples, "krolik_outbox_backlog") == 1, "the delayed task's row is not due"
    assert value(samples, "krolik_tasks", {"queue": DEFAULT, "status": "pending"}) == 1
    assert value(samples, "krolik_tasks", {"queue": DEFAULT, "status": "scheduled"}) == 1
    assert value(samples, "krolik_relay_published_total") == 0
    first_lag = value(samples, "krolik_outbox_lag_seconds")
    await wait_until(lambda: _above(lag, first_lag), what="the lag keeps growing")

    # A relay publishes the row: the outbox gauges go back to 0...
    relay = OutboxRelay(store, make_broker(), settings.relay)
    relay.start()
    try:
        await wait_until(
            lambda: _outbox_empty(api), what="the relay published the due row", timeout=15
        )
    finally:
        await relay.stop()

    # ...but no worker consumes: the due task stays pending and ages.
    samples = await scrape(api)
    assert value(samples, "krolik_tasks", {"queue": DEFAULT, "status": "pending"}) == 1
    age = value(samples, "krolik_oldest_pending_age_seconds", {"queue": DEFAULT})
    assert age is not None
    assert age > 0
    assert (await store.get(due["id"])).status is TaskStatus.PENDING
    (queue,) = [q for q in (await api.get("/queues")).json() if q["queue"] == DEFAULT]
    assert queue["pending"] == 1
    assert queue["scheduled"] == 1
    assert queue["oldest_pending_age_seconds"] > 0


async def _above(read: Callable[[], Any], threshold: float) -> bool:
    return await read() > threshold


async def _outbox_empty(api: httpx.AsyncClient) -> bool:
    samples = await scrape(api)
    return (
        value(samples, "krolik_outbox_backlog") == 0
        and value(samples, "krolik_outbox_lag_seconds") == 0
    )
