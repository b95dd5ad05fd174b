"""Every kind of store error, injected into every path of a real worker, in both deployments.

The store answers each call for real (PostgreSQL or SQLite), except that chosen calls
first raise one of the three kinds of error the store can raise (see
``krolik/store/failures.py``): the store is away (``StoreUnavailable``), the statement
lost a conflict (``StoreConflict``), or anything else (a bug). Whatever is raised and
wherever, the worker must end with all its slots free, its delivery settled (nothing
comes back to the queue once it stops consuming) and the task where it belongs.

``tests/integration/test_driver_errors.py`` makes the same kinds of error with the real
PostgreSQL (lock_timeout, a connection limit, a read-only database).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from krolik.broker.wire import TaskMessage
from krolik.errors import StoreConflict, StoreUnavailable
from krolik.registry import Registry
from krolik.relay import OutboxRelay
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from tests.conftest import wait_for_task
from tests.contract.deployment import Deployment, StartWorker, worker_starter
from tests.support.waiting import wait_until

KINDS: dict[str, Callable[[], Exception]] = {
    "unavailable": lambda: StoreUnavailable("injected: the store is away"),
    "conflict": lambda: StoreConflict("injected: deadlock detected"),
    "bug": lambda: RuntimeError("injected: a statement the store refused"),
}


class FaultyStore:
    """A real store whose chosen methods raise given errors on their next calls."""

    def __init__(self, store: TaskStore, faults: dict[str, list[Exception]]) -> None:
        self._store = store
        self.faults = faults
        self.raised: list[tuple[str, str]] = []

    def sibling(self) -> FaultyStore:
        sibling = FaultyStore(self._store.sibling(), self.faults)
        sibling.raised = self.raised
        return sibling

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not asyncio.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            pending = self.faults.get(name)
            if pending:
                error = pending.pop(0)
                self.raised.append((name, type(error).__name__))
                raise error
            return await attr(*args, **kwargs)

        return call


@pytest.fixture
def faults() -> dict[str, list[Exception]]:
    return {}


@pytest.fixture
async def faulty_worker(
    deployment: Deployment, faults: dict[str, list[Exception]]
) -> AsyncIterator[tuple[StartWorker, FaultyStore]]:
    store = FaultyStore(deployment.store, faults)
    # A relay publishes what the worker dispatches again (retries, tasks put back).
    relay = OutboxRelay(deployment.store, deployment.broker, deployment.settings.relay)
    relay.start()
    try:
        async for factory in worker_starter(deployment, store):  # type: ignore[arg-type]
            yield factory, store
    finally:
        await relay.stop()


def flaky_registry(runs: list[int], *, fail_first: bool = False, seconds: float = 0) -> Registry:
    registry = Registry()

    @registry.task(name="faults.job", max_attempts=3)
    async def job(payload: Any, context: Any) -> str:
        runs.append(context.attempt)
        if seconds:
            await asyncio.sleep(seconds)
        if fail_first and context.attempt == 1:
            raise ValueError("first attempt fails")
        return "ok"

    return registry


async def settled_and_free(deployment: Deployment, worker: Any) -> None:
    """Called once the test saw the delivery that got through: when every delivery is
    handled, nothing may come back to the queue as the worker stops consuming."""
    await wait_until(lambda: worker._slots.free == worker.concurrency, what="every slot back")
    await wait_until(lambda: worker.between_deliveries, what="every delivery is handled")
    await worker.stop(grace_seconds=1)
    assert await deployment.ready() == 0, "a delivery was left unsettled"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", ["claim_many", "complete_many", "heartbeat"])
async def test_a_run_survives_a_fault(
    deployment: Deployment,
    faulty_worker: tuple[StartWorker, FaultyStore],
    faults: dict[str, list[Exception]],
    kind: str,
    method: str,
) -> None:
    start, store = faulty_worker
    runs: list[int] = []
    # Long enough that a few heartbeats (every 0.3 s here) go out while it runs.
    registry = flaky_registry(runs, seconds=1.0 if method == "heartbeat" else 0)
    # Twice where the worker tries again by itself; a bug fails the call at once.
    faults[method] = [KINDS[kind]() for _ in range(1 if kind == "bug" else 2)]
    worker = await start(registry, concurrency=2)
    [task] = await deployment.enqueue("faults.job", [1])  # the relay publishes it
    done = await wait_for_task(deployment.store, task.id, TaskStatus.DONE, timeout=20)
    assert store.raised, "the fault was not reached"
    if method == "complete_many" and kind == "bug":
        assert done.attempts == 2, "a result the store refuses fails that run, retried"
    else:
        assert done.attempts == 1
        assert runs == [1]
    await settled_and_free(deployment, worker)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_retry_that_meets_a_fault_still_lands(
    deployment: Deployment,
    faulty_worker: tuple[StartWorker, FaultyStore],
    faults: dict[str, list[Exception]],
    kind: str,
) -> None:
    start, store = faulty_worker
    runs: list[int] = []
    faults["retry_later"] = [KINDS[kind]()]
    worker = await start(flaky_registry(runs, fail_first=True), concurrency=2)
    [task] = await deployment.enqueue("faults.job", [1])  # the relay publishes it
    if kind == "bug":
        # The retry could not be written at all: the run's lease runs out, and the rescuer
        # (not running here) would take it. The worker is whole again all the same.
        await wait_until(lambda: store.raised, what="the fault is reached")
        running = await wait_for_task(deployment.store, task.id, TaskStatus.PROCESSING)
        assert running.attempts == 1
    else:
        done = await wait_for_task(deployment.store, task.id, TaskStatus.DONE, timeout=20)
        assert done.attempts == 2
    await settled_and_free(deployment, worker)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_duplicate_delivery_survives_a_fault_while_it_is_looked_at(
    deployment: Deployment,
    faulty_worker: tuple[StartWorker, FaultyStore],
    faults: dict[str, list[Exception]],
    kind: str,
) -> None:
    """A message for a task already done: the worker reads the task to see why it could
    not claim it, and that read fails first."""
    start, store = faulty_worker
    [task] = await deployment.enqueue("echo", [1])
    worker = await start(concurrency=2)
    await wait_for_task(deployment.store, task.id, TaskStatus.DONE)
    await wait_until(lambda: worker.handled == 1, what="the first delivery is handled")
    faults["get_many"] = [KINDS[kind]()]  # the tasks of a claim's refusals, in one read
    await deployment.broker.publish([TaskMessage(task.id, "echo", deployment.queue)])
    await wait_until(lambda: worker.stats.skipped == 1, timeout=15, what="the duplicate skipped")
    assert store.raised == [("get_many", type(KINDS[kind]()).__name__)]
    await settled_and_free(deployment, worker)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", ["list_workers", "get", "dispatch_later"])
async def test_an_unserved_task_survives_a_fault_while_it_is_put_back(
    deployment: Deployment,
    faulty_worker: tuple[StartWorker, FaultyStore],
    faults: dict[str, list[Exception]],
    kind: str,
    method: str,
) -> None:
    """No worker has the task's handler: this one puts it back for later, and a call on
    that path fails first."""
    start, store = faulty_worker
    faults[method] = [KINDS[kind]()]
    worker = await start(concurrency=2)
    [task] = await deployment.enqueue("faults.nobody_has_it", [1])
    await wait_until(lambda: worker.stats.declined >= 1, timeout=15, what="the task put back")
    assert store.raised == [(method, type(KINDS[kind]()).__name__)]
    assert (await deployment.store.get(task.id)).status is TaskStatus.PENDING
    await settled_and_free(deployment, worker)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_an_unserved_task_is_failed_in_the_end_despite_a_fault(
    deployment: Deployment,
    faulty_worker: tuple[StartWorker, FaultyStore],
    faults: dict[str, list[Exception]],
    kind: str,
) -> None:
    start, store = faulty_worker
    deployment.settings.worker.unserved_fail_after_seconds = 1e-6
    faults["fail_unrunnable"] = [KINDS[kind]()]
    worker = await start(concurrency=2)
    [task] = await deployment.enqueue("faults.nobody_has_it", [1])
    failed = await wait_for_task(deployment.store, task.id, TaskStatus.FAILED, timeout=15)
    assert "faults.nobody_has_it" in (failed.error or "")
    assert store.raised == [("fail_unrunnable", type(KINDS[kind]()).__name__)]
    await settled_and_free(deployment, worker)
    assert len(await deployment.broker.dead_lettered()) == 1
