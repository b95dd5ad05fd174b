"""End-to-end fixtures: the real ``krolik`` CLI in subprocesses, against the real services.

Every process a test starts goes through ``cluster``; they are all killed (SIGKILL,
by PID) when the test ends, and their logs are attached to the report of a failed
test. Settings reach the processes as ``APP__...`` environment variables built from
the same values as ``tests.conftest.test_settings`` (own database, uuid-named
RabbitMQ queue and exchange, classic queue, short leases).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest
from pydantic import SecretStr

from krolik.broker.topology import Topology
from krolik.settings import Settings
from tests.conftest import AMQP_URL
from tests.support.processes import Proc, free_port, spawn_krolik

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Worker and API processes of the tests: short leases, fast rescue (the brief's timings).
E2E_TIMINGS: dict[str, str] = {
    "APP__WORKER__LEASE_SECONDS": "2",
    "APP__WORKER__HEARTBEAT_SECONDS": "0.3",
    "APP__MAINTENANCE__RESCUE_INTERVAL_SECONDS": "0.2",
}


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | dict):
        return json.dumps(value, default=_env_value)
    return str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``APP__SECTION__FIELD`` variables a Krolik process reads.

    None values are left out: unset means the default, which is None for them.
    """
    env: dict[str, str] = {}
    for key, value in settings.model_dump(mode="python").items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            if item is not None:
                name = f"APP__{key}__{sub}" if sub is not None else f"APP__{key}"
                env[name.upper()] = _env_value(item)
    return env


@dataclass
class Api:
    proc: Proc
    url: str


@dataclass
class Cluster:
    """Starts ``krolik`` processes for one test; ``kill_all`` ends every one of them."""

    env: dict[str, str]
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.log_dir / f"{len(self.procs):02d}-{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
        full_env.update(self.env)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        proc = spawn_krolik(name, list(args), env=full_env, cwd=REPO_ROOT, log_path=log_path)
        self.procs.append(proc)
        return proc

    def worker(self, name: str = "worker", *, env: Mapping[str, str] | None = None) -> Proc:
        return self.spawn(
            name, "worker", "--app", "tests.e2e.handlers", "--concurrency", "4", env=env
        )

    def relay(self, name: str = "relay", *, env: Mapping[str, str] | None = None) -> Proc:
        return self.spawn(name, "relay", env=env)

    async def api(
        self, name: str = "api", *, env: Mapping[str, str] | None = None, timeout: float = 30
    ) -> Api:
        """Start ``krolik api`` on a free port and wait until it answers /health."""
        port = free_port()
        proc = self.spawn(name, "api", "--host", "127.0.0.1", "--port", str(port), env=env)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=2) as client:

            async def answers() -> bool:
                if not proc.alive():
                    raise AssertionError(f"{name} exited early:\n{proc.tail()}")
                try:
                    return (await client.get(f"{url}/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(answers, timeout, f"{name} answers on {url}")
        return Api(proc, url)

    async def run(
        self, name: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> Proc:
        """Run a command to its end (killed after ``timeout``)."""
        proc = self.spawn(name, *args, env=env)
        code = await proc.wait_exit(timeout)
        if code is None:
            proc.kill()
            raise AssertionError(f"{name} did not finish within {timeout}s:\n{proc.tail()}")
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()

    def logs(self) -> str:
        return "\n".join(
            f"----- {proc.name} (pid {proc.pid}, exit {proc.popen.poll()}) -----\n{proc.tail()}"
            for proc in self.procs
        )


async def wait_until(
    check: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}; last: {last}")
        await asyncio.sleep(interval)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and isinstance(cluster, Cluster):
        report.sections.append(("krolik processes", cluster.logs()))
    return report


@pytest.fixture
def krolik_env(settings: Settings) -> dict[str, str]:
    """The test's settings as environment variables, with the e2e timings."""
    return settings_env(settings) | E2E_TIMINGS


@pytest.fixture
async def cluster(
    krolik_env: dict[str, str], settings: Settings, tmp_path: Path
) -> AsyncIterator[Cluster]:
    the_cluster = Cluster(env=krolik_env, log_dir=tmp_path)
    try:
        yield the_cluster
    finally:
        the_cluster.kill_all()
        await _delete_rabbit_objects(settings)


async def _delete_rabbit_objects(settings: Settings) -> None:
    """Remove the test's uuid-named queues and exchanges from the real RabbitMQ."""
    topology = Topology.from_settings(settings.rabbitmq, settings.default_queue)
    queues = {topology.queue(settings.default_queue).name, topology.dead_letter_queue}
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        async with connection:
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name)
            for exchange in (topology.exchange, topology.dead_letter_exchange):
                await channel.exchange_delete(exchange)
