"""Through a RabbitMQ outage, every line a real ``krolik api`` / ``worker`` writes is JSON.

The outage is when aio-pika and aiormq speak (standard library logging, tracebacks
included), so that is when a plain-text line would slip into the log stream.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from krolik.states import TaskStatus
from krolik.store.postgres import PostgresTaskStore
from tests.conftest import AMQP_URL
from tests.e2e.conftest import Cluster, Proc, free_port, wait_until
from tests.e2e.test_embedded import start_dev
from tests.e2e.test_processes import post_task, wait_status
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 3.0
AMQP_LOGGERS = ("aio_pika", "aiormq")


def parsed_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line of the process's output as a JSON object, or an assertion naming the line."""
    text = proc.log()
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(
                f"{proc.name}: line {number} is not JSON: {line!r}\n\n{text}"
            ) from None
        assert isinstance(value, dict), f"{proc.name}: line {number} is not an object: {line!r}"
        lines.append(value)
    return lines


def amqp_lines(proc: Proc) -> list[dict[str, Any]]:
    return [
        line for line in parsed_lines(proc) if str(line.get("logger", "")).startswith(AMQP_LOGGERS)
    ]


@pytest.mark.timeout(60)
async def test_every_line_stays_json_through_a_broker_outage(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    amqp = urlsplit(AMQP_URL)
    proxy = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await proxy.start()
    via_proxy = {"APP__RABBITMQ__URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/"}
    try:
        api = await cluster.api(env=via_proxy)
        worker = cluster.worker(env=via_proxy)
        async with httpx.AsyncClient(timeout=10) as client:
            before = await post_task(client, api.url, {"name": "echo", "payload": {"n": 1}})
            await wait_status(store, before, TaskStatus.DONE)

            await proxy.cut()
            await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait on something
            during = await post_task(client, api.url, {"name": "echo", "payload": {"n": 2}})
            await proxy.restore()
            await wait_status(store, during, TaskStatus.DONE, timeout=30)
            after = await post_task(client, api.url, {"name": "echo", "payload": {"n": 3}})
            await wait_status(store, after, TaskStatus.DONE, timeout=20)

        for proc in (api.proc, worker):
            proc.send(signal.SIGTERM)  # shutdown lines are part of the stream too
        for proc in (api.proc, worker):
            assert await proc.wait_exit(15) is not None, f"{proc.name} ignored SIGTERM"
    finally:
        await proxy.stop()

    for proc in (api.proc, worker):
        lines = parsed_lines(proc)
        assert all({"event", "level", "timestamp", "logger"} <= line.keys() for line in lines)
    # Not vacuous: the outage made the AMQP client libraries log, in both processes.
    for proc in (api.proc, worker):
        assert amqp_lines(proc), f"{proc.name} logged nothing from aio-pika/aiormq:\n{proc.log()}"
    assert any(line["event"] == "worker_stopped" for line in parsed_lines(worker)), worker.log()
    assert any(line["event"] == "Shutting down" for line in parsed_lines(api.proc)), api.proc.log()


@pytest.mark.timeout(60)
async def test_every_line_of_krolik_dev_is_json(cluster: Cluster, tmp_path: Path) -> None:
    """Off a terminal, ``krolik dev`` says where it listens in a log line, not a banner."""
    port = free_port()
    proc, url = await start_dev(cluster, tmp_path / "tasks.sqlite3", port)
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        task_id = (await client.post("/tasks/", json={"payload": "hi"})).json()["task_id"]

        async def done() -> bool:
            return bool((await client.get(f"/tasks/{task_id}")).json()["status"] == "done")

        await wait_until(done, 20, "the task is done")
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(15) == 0
    lines = parsed_lines(proc)
    [listening] = [line for line in lines if line["event"] == "krolik_dev_listening"]
    assert listening["url"] == url
    assert any(line["event"] == "worker_stopped" for line in lines), proc.log()
