"""A handler that blocks its worker's event loop keeps its lease: it runs once.

Real ``krolik worker`` processes (the loop of the test itself must not be the one
blocked): the handler calls ``time.sleep`` inside ``async def`` for three leases. The
worker's lease keeper extends the lease from its own thread meanwhile, so the other
worker's rescuer never takes the task; the stall is logged as a warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from krolik.states import TaskStatus
from krolik.store.postgres import PostgresTaskStore
from tests.e2e.conftest import E2E_TIMINGS, Cluster
from tests.e2e.test_processes import post_task, wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE_SECONDS = float(E2E_TIMINGS["APP__WORKER__LEASE_SECONDS"])


@pytest.mark.timeout(90)
async def test_a_handler_blocking_the_loop_for_three_leases_runs_once(
    cluster: Cluster, store: PostgresTaskStore, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.txt"
    runs.touch()
    api = await cluster.api()
    workers = [cluster.worker("worker-a"), cluster.worker("worker-b")]
    async with httpx.AsyncClient(timeout=10) as client:
        task_id = await post_task(
            client,
            api.url,
            {"name": "block_loop", "payload": {"seconds": 3 * LEASE_SECONDS, "runs": str(runs)}},
        )
        done = await wait_status(store, task_id, TaskStatus.DONE, timeout=60)
    assert done.attempts == 1
    assert len(runs.read_text().splitlines()) == 1, f"ran more than once: {runs.read_text()}"
    blocked = [
        json.loads(line)
        for worker in workers
        for line in worker.log().splitlines()
        if '"event_loop_blocked"' in line
    ]
    assert blocked, "the stall of the loop was not reported"
    assert blocked[0]["running_task_ids"] == [task_id]


@pytest.mark.timeout(60)
async def test_a_handler_blocking_the_loop_past_its_timeout_times_out(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    """The timer of the timeout cannot fire while the loop is blocked; the run still
    counts as timed out when the handler comes back late."""
    api = await cluster.api()
    cluster.worker()
    async with httpx.AsyncClient(timeout=10) as client:
        task_id = await post_task(
            client, api.url, {"name": "block_loop_past_timeout", "payload": {"seconds": 2.5}}
        )
        failed = await wait_status(store, task_id, TaskStatus.FAILED, timeout=30)
    assert failed.result is None
    assert failed.error == "TimeoutError: the handler ran longer than 1s"
