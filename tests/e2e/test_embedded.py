"""``krolik dev`` as a new user runs it: one process, a SQLite file, killed with -9."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.conftest import Cluster, free_port, wait_until

pytestmark = pytest.mark.e2e

# Nothing of PostgreSQL or RabbitMQ: the embedded mode needs neither.
NO_SERVICES = {
    "APP__DB__URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
    "APP__RABBITMQ__URL": "amqp://nobody:x@127.0.0.1:1/",
}


async def start_dev(cluster: Cluster, data: Path, port: int) -> Any:
    proc = cluster.spawn(
        "dev",
        "dev",
        "--port",
        str(port),
        "--data",
        str(data),
        "--app",
        "tests.e2e.handlers",
        env=NO_SERVICES,
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=2) as client:

        async def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"krolik dev exited early:\n{proc.tail()}")
            try:
                return (await client.get(f"{url}/health/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(ready, 60, "krolik dev answers /health/ready")
    return proc, url


async def test_tasks_survive_a_kill_9_of_krolik_dev(cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "tasks.sqlite3"
    port = free_port()
    proc, url = await start_dev(cluster, data, port)
    assert f"listening on {url}" in proc.log()
    assert str(data) in proc.log()

    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        done = (await client.post("/tasks/", json={"payload": "kept"})).json()["task_id"]
        running = (
            await client.post("/tasks/", json={"name": "sleep", "payload": {"seconds": 4}})
        ).json()["task_id"]
        later = (
            await client.post("/tasks/", json={"payload": "later", "delay_seconds": 3})
        ).json()["task_id"]

        async def status(task_id: int) -> str:
            return str((await client.get(f"/tasks/{task_id}")).json()["status"])

        await wait_until(lambda: _is(status(done), "done"), 20, "the first task is done")
        await wait_until(lambda: _is(status(running), "processing"), 20, "the sleep runs")

    proc.send(signal.SIGKILL)
    assert await proc.wait_exit(10) is not None

    _, url = await start_dev(cluster, data, port)
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        first = (await client.get(f"/tasks/{done}")).json()
        assert first["status"] == "done"
        assert first["result"] == "Processed 'kept'"

        async def final(task_id: int) -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(f"/tasks/{task_id}")).json()
            return body if body["status"] in ("done", "failed") else None

        rescued = await wait_until(lambda: final(running), 60, "the killed run is finished")
        delayed = await wait_until(lambda: final(later), 30, "the delayed task ran")
    # The run killed with the process came back at once (its attempt counted) and ran again.
    assert rescued["attempts"] == 2
    assert rescued["status"] == "done"
    assert delayed["status"] == "done"
    assert delayed["result"] == "Processed 'later'"


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_krolik_dev_stops_gracefully_on_a_signal(
    cluster: Cluster, tmp_path: Path, sig: signal.Signals
) -> None:
    """The worker drains (a running task finishes within the grace), the process says
    so and exits 0: uvicorn's re-raised signal must not kill it half-way."""
    data = tmp_path / "tasks.sqlite3"
    proc, url = await start_dev(cluster, data, free_port())
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        running = (
            await client.post("/tasks/", json={"name": "sleep", "payload": {"seconds": 1}})
        ).json()["task_id"]

        async def status() -> str:
            return str((await client.get(f"/tasks/{running}")).json()["status"])

        await wait_until(lambda: _is(status(), "processing"), 20, "the sleep runs")

    proc.send(sig)
    assert await proc.wait_exit(30) == 0, proc.tail()
    log = proc.log()
    assert "worker_draining" in log
    assert "worker_stopped" in log

    _, url = await start_dev(cluster, data, free_port())
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        finished = (await client.get(f"/tasks/{running}")).json()
    assert (finished["status"], finished["attempts"]) == ("done", 1), finished


async def read_events(lines: Any, until: str) -> list[dict[str, Any]]:
    """Events off a live ``text/event-stream`` until one of kind ``until`` arrived."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in lines:
        if not line:
            if current:
                events.append(current)
                if current.get("event") == until:
                    return events
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = orjson.loads(value) if key == "data" else value
    raise AssertionError(f"the stream ended before {until!r}: {events}")


async def test_a_dropped_event_stream_resumes_with_last_event_id(
    cluster: Cluster, tmp_path: Path
) -> None:
    _, url = await start_dev(cluster, tmp_path / "tasks.sqlite3", free_port())
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        body = {"name": "slow", "payload": {"seconds": 1.5}}
        task_id = (await client.post("/tasks/", json=body)).json()["task_id"]
        async with client.stream("GET", f"/tasks/{task_id}/events") as stream:
            first = await read_events(stream.aiter_lines(), until="started")
        # The connection is gone while the task runs; the client comes back with the id.
        assert (await client.get(f"/tasks/{task_id}")).json()["status"] == "processing"
        async with client.stream(
            "GET", f"/tasks/{task_id}/events", headers={"Last-Event-ID": first[-1]["id"]}
        ) as stream:
            rest = await read_events(stream.aiter_lines(), until="finished")
    assert [event["event"] for event in first] == ["queued", "started"]
    assert [event["event"] for event in rest] == ["finished"]
    assert rest[0]["data"]["task"]["result"]["slept"] == 1.5


async def test_the_change_stream_shows_new_tasks_to_their_end(
    cluster: Cluster, tmp_path: Path
) -> None:
    _, url = await start_dev(cluster, tmp_path / "tasks.sqlite3", free_port())
    async with (
        httpx.AsyncClient(base_url=url, timeout=20) as client,
        client.stream("GET", "/events", params={"queue": "default"}) as stream,
    ):
        lines = stream.aiter_lines()
        assert await anext(lines) == ": following"
        task_id = (await client.post("/tasks/", json={"payload": "seen"})).json()["task_id"]
        events = await read_events(lines, until="finished")
    # A change stream says what a task is now: a task done within the 50 ms its queued
    # and started notices may wait may show only as finished.
    mine = [event for event in events if event["data"]["task"]["id"] == task_id]
    assert mine[-1]["data"]["task"]["result"] == "Processed 'seen'"
    assert all(event["event"] in ("queued", "started", "finished") for event in mine)
