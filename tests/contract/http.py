"""HTTP clients on both modes Krolik ships, for the contract tests that only speak HTTP.

* production: PostgreSQL store, RabbitMQ broker, the app's relay and a started worker
  (the ``api`` and ``make_worker`` fixtures of ``tests/conftest.py``);
* embedded: what ``krolik dev`` runs, ``Embedded`` (SQLite, in-process broker, worker,
  rescuer) under the same app.

``client`` is parametrized over both; the workers serve ``handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from krolik.api.app import create_app
from krolik.builtin_tasks import builtin_registry
from krolik.embedded import Embedded
from krolik.registry import Registry, TaskContext
from krolik.schedules.scheduler import Scheduler
from krolik.settings import Settings
from krolik.snooze import Snooze
from krolik.store.base import TaskStore
from krolik.waker import Waker
from krolik.worker import Worker
from tests.conftest import test_settings as settings_for_tests

MODES = ["production", "embedded"]
FAILING = "contract.always_fails"
FAILING_ATTEMPTS = 2

handlers = Registry()


@handlers.task(name=FAILING, max_attempts=FAILING_ATTEMPTS)
async def always_fails(payload: Any) -> None:
    raise RuntimeError(f"cannot handle {payload!r}")


SLEEPS = "contract.sleeps"
REPORTS = "contract.reports_progress"


@handlers.task(name=SLEEPS)
async def sleeps(payload: Any) -> str:
    await asyncio.sleep(float(payload))
    return "slept"


@handlers.task(name=REPORTS)
async def reports_progress(payload: Any, context: TaskContext) -> int:
    """Reports ``steps`` times in a row, then waits ``linger`` seconds: the store keeps
    the last report (written within a second), not every one."""
    for step in range(1, payload["steps"] + 1):
        context.progress(step / payload["steps"], f"step {step}")
        await asyncio.sleep(0)
    await asyncio.sleep(payload.get("linger", 1.5))
    return int(payload["steps"])


YEARLY = "contract.yearly"


@handlers.task(name=YEARLY, cron="@yearly", tz="Europe/Berlin", payload={"happy": "new year"})
async def yearly(payload: Any) -> Any:
    """A schedule declared in code (by every worker that has this handler)."""
    return payload


SNOOZES = "contract.snoozes"
RUNS: dict[int, int] = {}
"""How many times each task of ``SNOOZES`` ran, by id."""


@handlers.task(name=SNOOZES, max_attempts=1)
async def snoozes(payload: Any, context: TaskContext) -> Any:
    """Snoozes ``times`` times (raising, or returning it with ``"return": true``), then
    says how many runs it took."""
    runs = RUNS[context.task_id] = RUNS.get(context.task_id, 0) + 1
    if runs <= payload["times"]:
        snooze = Snooze(payload.get("seconds", 0.1))
        if payload.get("return"):
            return snooze
        raise snooze
    return {"runs": runs, "attempt": context.attempt}


COUNTED = "contract.counted"


class Running:
    """What ``COUNTED``'s runs saw: how many ran at once at most, and their start order."""

    now = 0
    most = 0
    started: list[Any] = []

    @classmethod
    def reset(cls) -> None:
        cls.now = cls.most = 0
        cls.started = []


@handlers.task(name=COUNTED)
async def counted(payload: Any) -> Any:
    """Counts itself running (for caps asserted by the handlers), sleeps ``seconds``."""
    Running.now += 1
    Running.most = max(Running.most, Running.now)
    Running.started.append(payload.get("tag"))
    try:
        await asyncio.sleep(payload.get("seconds", 0.05))
    finally:
        Running.now -= 1
    return payload.get("tag")


URGENT = "contract.urgent"


@handlers.task(name=URGENT, priority=7)
async def urgent(payload: Any) -> Any:
    """A handler whose tasks start at priority 7 when their submit names none."""
    return payload


@pytest.fixture
async def production_client(
    api: httpx.AsyncClient,
    make_worker: Callable[..., Awaitable[Worker]],
    store: TaskStore,
    settings: Settings,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API, a worker and, as every worker node runs them, a scheduler and a waker."""
    await make_worker(handlers)
    scheduler = Scheduler(
        store, settings.scheduler, default_queue=settings.default_queue, registry=handlers
    )
    waker = Waker(store)
    scheduler.start()
    waker.start()
    yield api
    await waker.stop()
    await scheduler.stop()


@contextlib.asynccontextmanager
async def embedded_app(
    template: Path, folder: Path, run_id: str, registry: Registry, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client on ``krolik dev``'s node (SQLite in ``folder``, copied from the migrated
    ``template`` so start-up stays quick), with settings ``overrides``."""
    data = folder / "krolik.sqlite3"
    shutil.copyfile(template, data)
    settings = settings_for_tests("unused", run_id, embedded={"path": str(data)}, **overrides)
    embedded = Embedded.build(settings, registry)
    await embedded.start()
    try:
        app = create_app(embedded.node)
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://krolik.test"
            ) as client,
        ):
            yield client
    finally:
        await embedded.stop()


@pytest.fixture
async def embedded_client(
    sqlite_template: Path, tmp_path: Path, run_id: str
) -> AsyncIterator[httpx.AsyncClient]:
    registry = builtin_registry.merged(handlers)
    async with embedded_app(sqlite_template, tmp_path, run_id, registry) as client:
        yield client


@pytest.fixture(params=MODES, ids=MODES)
def client(request: pytest.FixtureRequest) -> httpx.AsyncClient:
    the_client: httpx.AsyncClient = request.getfixturevalue(f"{request.param}_client")
    return the_client


async def submit(client: httpx.AsyncClient, expected: int = 201, **body: Any) -> dict[str, Any]:
    response = await client.post("/tasks/", json=body)
    assert response.status_code == expected, response.text
    created: dict[str, Any] = response.json()
    return created


async def wait_for(
    client: httpx.AsyncClient, task_id: int, status: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll GET /tasks/{id} until the task has ``status``; fail on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        if task["status"] == status:
            return task
        if loop.time() > deadline:
            raise AssertionError(f"task {task_id} is not {status} after {timeout}s: {task}")
        await asyncio.sleep(0.02)
