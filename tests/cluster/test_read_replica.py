"""List and status reads from a streaming replica, and the primary when it falls behind.

An API with ``APP__DB__READ_URL`` on a real hot standby: it reads from the replica while
the replica keeps up; a task the replica does not have yet is read from the primary (a
client never gets 404 for the task it just created); with replay paused the replica
falls behind, ``/metrics`` and ``/health/ready`` say so, and reads go to the primary;
resumed, the replica serves again; stopped, reads still answer.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest

from krolik.settings import Settings
from tests.cluster.conftest import prepare
from tests.conftest import test_settings
from tests.e2e.conftest import E2E_TIMINGS, Cluster, _delete_rabbit_objects, settings_env
from tests.support.clusters import PostgresPair
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

MAX_LAG = 0.5


def replica_settings(pair: PostgresPair, database: str, run_id: str) -> Settings:
    return test_settings(
        database,
        run_id,
        db={
            "url": pair.url(pair.primary_port, database),
            "read_url": pair.url(pair.replica_port, database),
            "read_max_lag_seconds": MAX_LAG,
            "read_check_seconds": 0.1,
            "pool_size": 3,
        },
        metrics={"refresh_seconds": 0},
    )


async def replica_connections(pair: PostgresPair, database: str) -> int:
    replica = await asyncpg.connect(host="127.0.0.1", port=pair.replica_port, user="postgres")
    try:
        count: int = await replica.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            database,
            "krolik",
        )
        return count
    finally:
        await replica.close()


async def on_replica(pair: PostgresPair, sql: str) -> None:
    replica = await asyncpg.connect(host="127.0.0.1", port=pair.replica_port, user="postgres")
    try:
        await replica.execute(sql)
    finally:
        await replica.close()


def gauge(metrics_text: str, name: str) -> float | None:
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.timeout(120)
async def test_reads_use_the_replica_while_it_keeps_up(
    pair: PostgresPair, rabbitmq_available: None, run_id: str, tmp_path: Path
) -> None:
    database = await prepare(pair, synchronous=False)
    settings = replica_settings(pair, database, run_id)
    processes = Cluster(env=settings_env(settings) | E2E_TIMINGS, log_dir=tmp_path)
    try:
        api = await processes.api()
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:

            async def submit() -> int:
                response = await http.post("/tasks/", json={"name": "whoami", "payload": 1})
                assert response.status_code == 201, response.text
                task_id: int = response.json()["id"]
                return task_id

            async def ready_replica() -> str:
                body = (await http.get("/health/ready")).json()
                replica: str = body["checks"]["replica"]
                return replica

            first = await submit()
            assert (await http.get(f"/tasks/{first}")).status_code == 200
            await wait_until(lambda: _eq(ready_replica(), "ok"), 10, "the replica is usable")
            assert (await http.get("/queues")).status_code == 200
            assert await replica_connections(pair, database) >= 1, "the replica was not used"
            metrics = (await http.get("/metrics")).text
            assert gauge(metrics, "krolik_db_replica_usable") == 1.0

            # Replay paused: what the primary writes now, the replica does not have.
            await on_replica(pair, "SELECT pg_wal_replay_pause()")
            fresh = await submit()
            response = await http.get(f"/tasks/{fresh}")
            assert response.status_code == 200, "a task just created was not found"
            assert response.json()["id"] == fresh

            async def lagging() -> bool:
                await submit()  # WAL the replica receives but does not replay
                return (await ready_replica()).startswith("unusable: lagging")

            await wait_until(lagging, 10, "the replica counts as lagging")
            ready = await http.get("/health/ready")
            assert ready.status_code == 200, "an unusable replica must not make the API unready"
            metrics = (await http.get("/metrics")).text
            assert gauge(metrics, "krolik_db_replica_usable") == 0.0
            lag = gauge(metrics, "krolik_db_replica_lag_seconds")
            assert lag is not None
            assert lag > MAX_LAG
            listed = {item["id"] for item in (await http.get("/tasks")).json()["items"]}
            assert fresh in listed, "a lagging replica answered the list"

            await on_replica(pair, "SELECT pg_wal_replay_resume()")
            await wait_until(lambda: _eq(ready_replica(), "ok"), 10, "the replica caught up")

            pair.stop_replica()
            assert (await http.get("/tasks")).status_code == 200
            assert (await http.get(f"/tasks/{fresh}")).status_code == 200
            await wait_until(
                lambda: _startswith(ready_replica(), "unusable: unreachable"),
                10,
                "a stopped replica counts as unreachable",
            )
            assert (await http.get("/health/ready")).status_code == 200
    finally:
        processes.kill_all()
        await _delete_rabbit_objects(settings)


async def _eq(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]


async def _startswith(value: object, prefix: str) -> bool:
    text: str = await value  # type: ignore[misc]
    return text.startswith(prefix)
