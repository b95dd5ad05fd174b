"""The worker's own HTTP port (`krolik worker --metrics-port`): /health, /health/ready
(what the compose healthcheck calls) and /metrics (what Prometheus scrapes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from krolik.metrics import DEAD_LETTER_REASONS, Metrics
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.worker import Worker
from krolik.worker.probe import probe_server
from tests.conftest import wait_for_task
from tests.ops.conftest import parse_samples, value, wait_until


@contextlib.asynccontextmanager
async def serving_probe(worker: Worker, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    """The probe on a free port (its socket bound here, so no other process can take the
    port in between), with a client for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = probe_server(worker, metrics, "127.0.0.1", port)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started or serving.done(), what="the probe is serving")
        if serving.done():
            serving.result()  # raises why it stopped
            pytest.fail("the probe server stopped at start-up")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


async def test_the_worker_probe_serves_health_readiness_and_metrics(
    api: httpx.AsyncClient, store: TaskStore, make_worker: Callable[..., Any]
) -> None:
    metrics = Metrics()
    worker = await make_worker(observer=metrics)
    async with serving_probe(worker, metrics) as probe:
        alive = await probe.get("/health")
        assert alive.status_code == 200
        assert alive.json() == {"status": "ok", "worker_id": worker.worker_id}

        ready = await probe.get("/health/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ok"
        assert body["checks"] == {"database": "ok", "broker": "ok", "consuming": "ok"}

        before = await probe.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert "krolik_tasks_started_total{" not in before.text  # no run yet

        response = await api.post("/tasks/", json={"name": "echo", "payload": "probe"})
        assert response.status_code == 201, response.text
        await wait_for_task(store, response.json()["id"], TaskStatus.DONE)
        await worker.wait_for_idle()

        after = await probe.get("/metrics")
        assert "krolik_tasks_started_total" in after.text
        samples = parse_samples(after.text)
        echo = {"name": "echo", "queue": "default"}
        assert value(samples, "krolik_tasks_started_total", echo) == 1
        assert value(samples, "krolik_tasks_succeeded_total", echo) == 1
        assert value(samples, "krolik_task_duration_seconds_count", {"name": "echo"}) == 1
        for reason in DEAD_LETTER_REASONS:  # exported at 0, so increase() sees the first one
            assert value(samples, "krolik_messages_dead_lettered_total", {"reason": reason}) == 0

        await worker.stop(grace_seconds=1)
        stopped = await probe.get("/health/ready")
        assert stopped.status_code == 503, stopped.text
        assert stopped.json()["status"] == "unavailable"
        assert stopped.json()["checks"]["consuming"] == "unavailable"
        assert (await probe.get("/health")).status_code == 200  # alive, just not ready
