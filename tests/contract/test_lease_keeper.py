"""The lease keeper, on both stores: leases live on while the worker's loop is blocked.

The keeper extends leases from a thread of its own; here the test's own event loop is
the worker's, and ``time.sleep`` in it is the handler that blocks it. A run the worker
had claimed but not yet registered when its loop stalled (the claim's answer waits for
the loop) must keep its lease too, or another worker runs the task a second time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from krolik.store.base import TaskStore
from krolik.store.records import NewTask, RunRef
from krolik.worker.lease_keeper import BeatReport, LeaseKeeper

LEASE = 1.0
WORKER = "keeper-test-worker"


@pytest.fixture
async def keeper(any_store: TaskStore) -> AsyncIterator[LeaseKeeper]:
    reports: list[BeatReport] = []
    the_keeper = LeaseKeeper(
        any_store,
        worker_id=WORKER,
        lease_seconds=LEASE,
        interval_seconds=0.1,
        blocked_warn_seconds=0.5,
        on_report=reports.append,
    )
    the_keeper.start()
    yield the_keeper
    await the_keeper.stop()


async def claim(store: TaskStore) -> RunRef:
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=None)])
    task = await store.claim(enqueued.task.id, WORKER, LEASE, {"echo": 3})
    assert task is not None
    return RunRef.of(task)


async def still_leased(store: TaskStore, run: RunRef) -> bool:
    task = await store.get(run.task_id)
    assert task is not None
    return task.lease_expires_at is not None and task.lease_expires_at > datetime.now(UTC)


async def test_a_tracked_run_keeps_its_lease_while_the_loop_is_blocked(
    any_store: TaskStore, keeper: LeaseKeeper
) -> None:
    run = await claim(any_store)
    keeper.track(run, None)
    time.sleep(3 * LEASE)  # the handler blocks the loop
    assert await still_leased(any_store, run)
    assert await any_store.rescue_expired(10) == []


async def test_a_run_claimed_but_not_yet_registered_keeps_its_lease_while_the_loop_is_blocked(
    any_store: TaskStore, keeper: LeaseKeeper
) -> None:
    run = await claim(any_store)  # committed; the worker has not taken the answer in yet
    time.sleep(3 * LEASE)
    assert await still_leased(any_store, run), "its lease ran out: another worker would run it"
    assert await any_store.rescue_expired(10) == []
    await asyncio.sleep(3 * LEASE)  # the loop runs again: an untracked run is not kept
    assert not await still_leased(any_store, run)
