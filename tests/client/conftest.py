"""The client against the real app, in both modes Krolik ships.

* production: the ``api`` app of ``tests/conftest.py`` (PostgreSQL, RabbitMQ, its relay)
  and a worker serving ``tests/client/handlers.py``;
* embedded: ``krolik dev``'s node (SQLite, the in-process broker and worker).

``krolik`` is an ``AsyncClient`` on the app in-process (``httpx.ASGITransport``);
``served`` serves the same app with uvicorn on 127.0.0.1, for what needs a real socket
(streams as they come, the sync client, a proxy in between).
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
import uvicorn
from asgi_lifespan import LifespanManager
from krolik_client import AsyncClient, Retries

from krolik.api.app import create_app
from krolik.builtin_tasks import builtin_registry
from krolik.embedded import Embedded
from krolik.store.sqlite import SqliteTaskStore
from krolik.worker import Worker
from tests.client.handlers import handlers
from tests.conftest import test_settings
from tests.support.processes import free_port

MODES = ["production"]
"""The client talks HTTP, the same whatever serves it; the API's contract tests run both
modes, and ``test_tasks.py`` takes one typed round trip through ``krolik dev`` too."""
BASE_URL = "http://krolik.test"
QUICK_RETRIES = Retries(attempts=4, backoff=0.05, backoff_max=0.2)


@pytest.fixture
async def production_app(
    api: httpx.AsyncClient, make_worker: Callable[..., Awaitable[Worker]]
) -> Any:
    await make_worker(handlers)
    return api.app  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to the head, copied for every test (migrating takes long)."""
    store = SqliteTaskStore(tmp_path_factory.mktemp("client-sqlite") / "template.sqlite3")
    await store.open()
    await store.close()
    return store.path


@pytest.fixture
async def embedded_app(migrated_sqlite: Path, tmp_path: Path, run_id: str) -> AsyncIterator[Any]:
    data = tmp_path / "krolik.sqlite3"
    shutil.copyfile(migrated_sqlite, data)
    settings = test_settings("unused", run_id, embedded={"path": str(data)})
    embedded = Embedded.build(settings, builtin_registry.merged(handlers))
    await embedded.start()
    try:
        async with LifespanManager(create_app(embedded.node)) as manager:
            yield manager.app
    finally:
        await embedded.stop()


@pytest.fixture(params=MODES, ids=MODES)
def app(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_app")


@pytest.fixture
async def krolik(app: Any) -> AsyncIterator[AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient(BASE_URL, transport=transport, retries=QUICK_RETRIES) as client:
        yield client


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` (started already) served by uvicorn on a free port, while the block runs."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def served(app: Any) -> AsyncIterator[str]:
    """The URL of the app served over TCP."""
    async with serving(app) as url:
        yield url
