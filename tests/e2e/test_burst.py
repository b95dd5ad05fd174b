"""``krolik worker --burst``: run what is due now, then exit (arq's mode, for scripts and
deterministic end-to-end tests)."""

from __future__ import annotations

import pytest

from krolik.states import TaskStatus
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import NewTask
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(90)
async def test_a_burst_worker_runs_what_is_due_and_exits(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    due = await store.enqueue(
        [NewTask(name="whoami", queue="default", payload=i) for i in range(20)]
    )
    [later] = await store.enqueue(
        [NewTask(name="whoami", queue="default", payload="later", delay_seconds=3600)]
    )
    [unserved] = await store.enqueue(
        [NewTask(name="no.worker.has.this", queue="default", payload=None)]
    )
    relay = cluster.relay()  # publishes what was enqueued straight into the store
    worker = await cluster.run(
        "worker",
        "worker",
        "--app",
        "tests.e2e.handlers",
        "--burst",
        timeout=60,
    )
    relay.kill()
    assert worker.popen.returncode == 0, worker.tail()
    for item in due:
        task = await store.get(item.task.id)
        assert task is not None
        assert task.status is TaskStatus.DONE, task
    for item in (later, unserved):
        task = await store.get(item.task.id)
        assert task is not None
        assert task.status is TaskStatus.PENDING, "not due, or not this worker's: not waited for"
    assert '"worker_burst_done"' in worker.log()
