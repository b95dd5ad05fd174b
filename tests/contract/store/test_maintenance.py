"""What the rescuer does: expired leases, lost messages; on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from tests.contract.store.support import (
    OTHER_WORKER,
    add,
    backdate,
    current,
    drain_outbox,
    due_outbox,
    take,
)


# -- rescue ----------------------------------------------------------------------------
async def test_rescue_takes_back_expired_runs_only(any_store: TaskStore) -> None:
    again = await add(any_store, max_attempts=3)
    exhausted = await add(any_store, max_attempts=1)
    healthy = await add(any_store, max_attempts=1)
    for task in (again, exhausted, healthy):
        await take(any_store, task)
    await drain_outbox(any_store)
    for task in (again, exhausted):
        await backdate(any_store, task.id, lease_expires_at=timedelta(seconds=1))

    rescued = await any_store.rescue_expired(100)
    assert sorted((r.task_id, r.status, r.attempts) for r in rescued) == [
        (again.id, TaskStatus.PENDING, 1),
        (exhausted.id, TaskStatus.FAILED, 1),
    ]
    back = await current(any_store, again.id)
    assert (back.status, back.attempts, back.worker_id, back.lease_expires_at) == (
        TaskStatus.PENDING,
        1,
        None,
        None,
    )
    assert back.finished_at is None
    dead = await current(any_store, exhausted.id)
    assert dead.status is TaskStatus.FAILED
    assert dead.error
    assert "lease" in dead.error
    assert dead.finished_at is not None
    assert (await current(any_store, healthy.id)).status is TaskStatus.PROCESSING
    assert await due_outbox(any_store) == [again.id]

    claimed, _ = await take(any_store, back, worker=OTHER_WORKER)
    assert claimed.attempts == 2  # the lost run counted
    assert await any_store.rescue_expired(100) == []


async def test_expire_all_leases_hands_every_run_to_the_rescuer(any_store: TaskStore) -> None:
    first, second, waiting = [await add(any_store) for _ in range(3)]
    await take(any_store, first)
    await take(any_store, second, worker=OTHER_WORKER)
    assert await any_store.expire_all_leases() == 2
    for task in (first, second):
        expired = await current(any_store, task.id)
        assert expired.lease_expires_at is not None
        assert expired.lease_expires_at < datetime.now(UTC)
    rescued = await any_store.rescue_expired(100)
    assert sorted(r.task_id for r in rescued) == [first.id, second.id]
    assert (await current(any_store, waiting.id)).status is TaskStatus.PENDING
    assert await any_store.expire_all_leases() == 0


# -- re-dispatch of tasks whose message was lost ---------------------------------------
async def test_redispatch_stale_gives_a_lost_task_an_outbox_row(any_store: TaskStore) -> None:
    lost = await add(any_store)
    recent = await add(any_store)
    due_lately = await add(any_store)  # made long ago, due (so published) only lately
    elsewhere = await add(any_store, queue="other")
    await drain_outbox(any_store)  # published, then the messages were lost
    queued = await add(any_store)  # still has its outbox row
    future = await add(any_store, delay_seconds=3600)  # not due
    for task in (lost, queued, future, elsewhere):
        await backdate(any_store, task.id, updated_at=timedelta(hours=1), run_at=timedelta(hours=1))
    await backdate(any_store, due_lately.id, updated_at=timedelta(hours=1))
    await backdate(any_store, future.id, run_at=-timedelta(hours=1))

    assert await any_store.stale_queues(7200) == []
    assert await any_store.stale_queues(60) == ["default", "other"]
    assert await any_store.redispatch_stale(7200, 100) == 0
    assert await any_store.redispatch_stale(60, 100, []) == 0
    assert await any_store.redispatch_stale(60, 100, ["default"]) == 1
    assert await due_outbox(any_store) == [lost.id, queued.id]
    assert (await current(any_store, lost.id)).status is TaskStatus.PENDING
    assert await any_store.redispatch_stale(60, 100, ["default"]) == 0
    assert recent.id not in await due_outbox(any_store)
    assert due_lately.id not in await due_outbox(any_store)
    assert await any_store.stale_queues(60) == ["other"]
    assert await any_store.redispatch_stale(60, 100) == 1
    assert await any_store.stale_queues(60) == []
