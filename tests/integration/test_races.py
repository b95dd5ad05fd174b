"""Interleavings of the API with workers and the rescuer, made deterministic with a row lock.

A concurrent transaction changes the task and holds its row until the test lets it
commit; the statement under test waits for it, then sees the committed change.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from krolik.states import TaskStatus
from krolik.store.records import NewTask
from tests.conftest import PG_HOST, PG_PORT, PG_USER

pytestmark = pytest.mark.integration


async def test_cancel_of_a_task_going_back_to_pending_meanwhile_is_not_refused(store, pg_database):
    """The task runs; a rescue (its lease ran out) sends it back to pending while the
    cancel is on its way. Pending or running, it can be cancelled: the answer must not be
    409 "the task is pending and cannot be cancelled"."""
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=1)])
    task_id = enqueued.task.id
    assert await store.claim(task_id, "worker-a", 30, {"echo": 3}) is not None
    rescue = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=pg_database)
    try:
        transaction = rescue.transaction()
        await transaction.start()
        await rescue.execute(
            "UPDATE krolik_tasks SET status = 'pending', worker_id = NULL, "
            "lease_expires_at = NULL WHERE id = $1",
            task_id,
        )
        cancelling = asyncio.create_task(store.cancel(task_id))
        await asyncio.sleep(0.3)  # the cancel waits for the rescue's row lock
        assert not cancelling.done()
        await transaction.commit()
        cancelled = await asyncio.wait_for(cancelling, 5)
    finally:
        await rescue.close()
    assert cancelled.status is TaskStatus.CANCELLED
    assert (await store.get(task_id)).status is TaskStatus.CANCELLED
