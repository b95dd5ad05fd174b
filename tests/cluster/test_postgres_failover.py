"""The PostgreSQL primary crashes under load and its replica is promoted.

An API (with its relay) and two workers reach the database through a multi-host URL
(primary, replica; ``target_session_attrs=read-write``) and never restart. Clients post
tasks without pause; the primary is stopped with ``-m immediate`` (a crash) and, a
second later, the replica is promoted. Meanwhile the API answers 503 with
``Retry-After`` and never 500; afterwards every process finds the new primary by itself
and every task the new primary has finishes. Each acknowledged task that the new primary
lacks was lost with the primary: with synchronous replication none may be, with
asynchronous replication the count is printed (what a user risks without it).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from krolik.settings import Settings
from krolik.store.postgres import PostgresTaskStore
from tests.cluster.conftest import prepare
from tests.conftest import test_settings
from tests.e2e.conftest import E2E_TIMINGS, Cluster, _delete_rabbit_objects, settings_env
from tests.support.clusters import PostgresPair

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

CLIENTS = 8
BEFORE_CRASH_SECONDS = 3.0
PROMOTE_AFTER_SECONDS = 1.0
AFTER_PROMOTION_SECONDS = 4.0


def failover_settings(pair: PostgresPair, database: str, run_id: str) -> Settings:
    url = (
        f"postgresql+asyncpg://postgres@127.0.0.1:{pair.primary_port},"
        f"127.0.0.1:{pair.replica_port}/{database}?target_session_attrs=read-write"
    )
    return test_settings(
        database, run_id, db={"url": url, "pool_size": 5, "connect_timeout_seconds": 2}
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("replication", ["asynchronous", "synchronous"])
async def test_a_promoted_replica_takes_over_without_a_restart(
    replication: str,
    pair: PostgresPair,
    rabbitmq_available: None,
    run_id: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = await prepare(pair, synchronous=replication == "synchronous")
    settings = failover_settings(pair, database, run_id)
    processes = Cluster(env=settings_env(settings) | E2E_TIMINGS, log_dir=tmp_path)
    runs = tmp_path / "runs.txt"
    runs.touch()
    try:
        api = await processes.api()
        workers = [
            processes.spawn(name, "worker", "--app", "tests.e2e.handlers", "--concurrency", "8")
            for name in ("worker-a", "worker-b")
        ]
        acknowledged: list[int] = []
        answers: Counter[str] = Counter()
        stop = asyncio.Event()

        async def client(http: httpx.AsyncClient) -> None:
            while not stop.is_set():
                try:
                    response = await http.post(
                        f"{api.url}/tasks/",
                        json={"name": "note_run", "payload": {"runs": str(runs)}},
                    )
                except httpx.TransportError as exc:
                    answers[type(exc).__name__] += 1
                    await asyncio.sleep(0.1)
                    continue
                answers[str(response.status_code)] += 1
                if response.status_code == 201:
                    acknowledged.append(response.json()["id"])
                elif response.status_code == 503:
                    assert response.headers.get("Retry-After"), response.text
                    await asyncio.sleep(0.1)

        async with httpx.AsyncClient(timeout=10) as http:
            clients = [asyncio.create_task(client(http)) for _ in range(CLIENTS)]
            await asyncio.sleep(BEFORE_CRASH_SECONDS)
            before_crash = len(acknowledged)
            crashed_at = time.monotonic()
            pair.stop_primary("immediate")
            await asyncio.sleep(PROMOTE_AFTER_SECONDS)
            pair.promote()
            promoted_at = time.monotonic()
            first_after: float | None = None
            while time.monotonic() - promoted_at < AFTER_PROMOTION_SECONDS or first_after is None:
                if len(acknowledged) > before_crash and first_after is None:
                    first_after = time.monotonic()
                assert time.monotonic() - promoted_at < 60, "no submission succeeded again"
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*clients)

        assert not {code for code in answers if code.startswith("5") and code != "503"}, answers
        new_primary = PostgresTaskStore.from_settings(settings.db)
        try:
            present, counts = await settle(new_primary, acknowledged)
        finally:
            await new_primary.close()
        lost = len(acknowledged) - present
        assert counts == {"done": present}, counts
        for worker in workers:
            assert worker.alive(), f"{worker.name} exited:\n{worker.tail()}"
        assert api.proc.alive(), f"the API exited:\n{api.proc.tail()}"
        per_task = Counter(line.split()[0] for line in runs.read_text().splitlines())
        reruns = sum(n - 1 for n in per_task.values() if n > 1)
        if replication == "synchronous":
            assert lost == 0, f"{lost} acknowledged tasks lost with synchronous replication"
        with capsys.disabled():
            print(
                f"\nPostgreSQL failover, {replication} replication: {len(acknowledged)} "
                f"acknowledged, {lost} lost, {reruns} re-runs; answers {dict(answers)}; "
                f"first submission accepted {first_after - crashed_at:.1f}s after the crash "
                f"({first_after - promoted_at:.1f}s after the promotion)"
            )
    finally:
        processes.kill_all()
        await _delete_rabbit_objects(settings)


async def settle(store: PostgresTaskStore, acknowledged: list[int]) -> tuple[int, dict[str, int]]:
    """Wait until every acknowledged task the new primary has is done; how many it has,
    and their statuses."""
    deadline = time.monotonic() + 90
    while True:
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT status, count(*) FROM krolik_tasks WHERE id = ANY(:ids) GROUP BY 1"),
                {"ids": acknowledged},
            )
            counts = {status: count for status, count in rows.all()}
        present = sum(counts.values())
        if counts.get("done", 0) == present or time.monotonic() > deadline:
            return present, counts
        await asyncio.sleep(0.2)
