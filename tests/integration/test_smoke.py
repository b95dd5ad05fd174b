from __future__ import annotations

from krolik.states import TaskStatus
from krolik.store.records import NewTask
from tests.conftest import wait_for_task


async def test_a_task_goes_from_enqueue_to_done(store, relay, make_worker):
    await make_worker()
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload={"a": 1})])
    relay.wake()
    done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE)
    assert done.result == {"a": 1}
    assert done.attempts == 1
    assert done.finished_at is not None
    assert done.started_at is not None
    assert done.finished_at >= done.started_at
