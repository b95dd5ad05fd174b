"""Three APIs behind a real nginx, one killed -9 mid-load: one task per idempotency key.

nginx runs the repository's server block (``deploy/nginx/nginx.conf``) with a static
upstream of three ``krolik api`` processes on loopback. Clients submit tasks, each with
an idempotency key of its own, and retry with the same key on a dropped connection or a
5xx, as a careful client does; a third of the way through, one API is killed -9. nginx
moves new requests to the other two; what was in flight on the dead one fails and is
retried. Every key ends with exactly one task, acknowledged, and nothing answers 500.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from krolik.settings import Settings
from krolik.store.postgres import PostgresTaskStore
from tests.cluster.conftest import CLUSTER_BASE
from tests.conftest import service_missing, test_settings
from tests.e2e.conftest import E2E_TIMINGS, Cluster, _delete_rabbit_objects, settings_env
from tests.support.clusters import Nginx
from tests.support.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

KEYS = 1500
CLIENTS = 48
RETRYABLE = {502, 503, 504}


@pytest.fixture
def settings(pg_database: str, rabbitmq_available: None, run_id: str) -> Settings:
    return test_settings(pg_database, run_id)


@pytest.mark.timeout(180)
async def test_one_api_killed_behind_nginx_gives_one_task_per_key(
    settings: Settings, store: PostgresTaskStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Nginx.available():
        service_missing("nginx (Debian's nginx) is not installed")
    processes = Cluster(env=settings_env(settings) | E2E_TIMINGS, log_dir=tmp_path)
    nginx: Nginx | None = None
    try:
        apis = [await processes.api(f"api-{n}") for n in range(3)]
        ports = [int(api.url.rsplit(":", 1)[1]) for api in apis]
        nginx = Nginx(
            base=CLUSTER_BASE / f"nginx-{uuid.uuid4().hex[:6]}", port=free_port(), upstreams=ports
        )
        nginx.start()
        entry = f"http://127.0.0.1:{nginx.port}"

        keys = [f"order-{uuid.uuid4().hex}" for _ in range(KEYS)]
        pending: asyncio.Queue[str] = asyncio.Queue()
        for key in keys:
            pending.put_nowait(key)
        task_of: dict[str, int] = {}
        answers: Counter[str] = Counter()
        retries = 0

        async def client(http: httpx.AsyncClient) -> None:
            nonlocal retries
            while True:
                try:
                    key = pending.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"name": "whoami", "payload": {"key": key}, "idempotency_key": key}
                for attempt in range(50):
                    try:
                        response = await http.post(f"{entry}/tasks/", json=body)
                    except httpx.TransportError as exc:
                        answers[type(exc).__name__] += 1
                    else:
                        answers[str(response.status_code)] += 1
                        if response.status_code in (200, 201):
                            task_of[key] = response.json()["id"]
                            break
                        assert response.status_code in RETRYABLE, response.text
                    retries += 1
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                else:
                    raise AssertionError(f"key {key} never got a task")

        async with httpx.AsyncClient(timeout=10) as http:
            clients = [asyncio.create_task(client(http)) for _ in range(CLIENTS)]
            while len(task_of) < KEYS // 3:
                await asyncio.sleep(0.01)
            killed_at = time.monotonic()
            apis[0].proc.kill()
            await asyncio.gather(*clients)
            finished = time.monotonic() - killed_at

        assert set(task_of) == set(keys)
        assert len(set(task_of.values())) == KEYS, "two keys share a task"
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT count(*), count(DISTINCT payload->>'key') FROM krolik_tasks")
            )
            tasks, distinct_keys = rows.one()
        assert (tasks, distinct_keys) == (KEYS, KEYS), f"{tasks} tasks for {KEYS} keys"
        assert "500" not in answers, answers
        with capsys.disabled():
            print(
                f"\nnginx + 3 APIs, one killed -9: {KEYS} keys, {tasks} tasks, {retries} "
                f"client retries; answers {dict(answers)}; the rest took {finished:.1f}s"
            )
    finally:
        if nginx is not None:
            nginx.stop()
            shutil.rmtree(nginx.base, ignore_errors=True)
        processes.kill_all()
        await _delete_rabbit_objects(settings)
