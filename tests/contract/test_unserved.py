"""Tasks a worker has no handler for are left to workers that have one, in both deployments.

During a rolling deploy, or with worker pools of different handlers on one queue, a
worker receives tasks it cannot run. It puts them back (dispatched again, for another
worker) instead of failing them; and it always runs the handler of the task as
stored, whatever name the message carries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from krolik.registry import Registry
from krolik.relay import OutboxRelay
from krolik.states import TaskStatus
from krolik.worker import intake
from tests.conftest import wait_for_task
from tests.contract.deployment import Deployment, StartWorker
from tests.support.waiting import wait_until

ONLY_SOME = "unserved.only_some_have_it"


def pool_registry(ran: list[str], who: str) -> Registry:
    registry = Registry()

    @registry.task(name=ONLY_SOME)
    async def only_some(payload: Any) -> str:
        ran.append(who)
        return who

    return registry


@pytest.fixture
async def relay(deployment: Deployment) -> AsyncIterator[OutboxRelay]:
    the_relay = OutboxRelay(deployment.store, deployment.broker, deployment.settings.relay)
    the_relay.start()
    yield the_relay
    await the_relay.stop()


async def test_mixed_pools_on_one_queue_run_every_task_where_its_handler_is(
    deployment: Deployment, start_worker: StartWorker, relay: OutboxRelay
) -> None:
    ran: list[str] = []
    without = await start_worker(concurrency=4)  # builtin handlers only
    with_it = await start_worker(pool_registry(ran, "with"), concurrency=2)
    tasks = await deployment.enqueue(ONLY_SOME, list(range(20)))
    for task in tasks:
        done = await wait_for_task(deployment.store, task.id, TaskStatus.DONE, timeout=30)
        assert (done.result, done.attempts) == ("with", 1)
    assert ran == ["with"] * 20
    assert without.stats.claimed == without.stats.failed == without.stats.dead_lettered == 0
    assert with_it.stats.succeeded == 20


async def test_a_task_no_worker_can_run_waits_until_one_comes(
    deployment: Deployment,
    start_worker: StartWorker,
    relay: OutboxRelay,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rolling deploy: the new handler's workers start after its tasks were sent."""
    monkeypatch.setattr(intake, "UNSERVED_RECHECK_SECONDS", 0.5)  # not 5 s per look
    old = await start_worker(concurrency=2)
    [task] = await deployment.enqueue(ONLY_SOME, [1])
    await wait_until(lambda: old.stats.declined >= 2, timeout=20, what="put back, twice")
    assert (await deployment.store.get(task.id)).status is TaskStatus.PENDING
    ran: list[str] = []
    await start_worker(pool_registry(ran, "new"), concurrency=2)
    done = await wait_for_task(deployment.store, task.id, TaskStatus.DONE, timeout=20)
    assert (done.result, done.attempts) == ("new", 1)
    assert old.stats.failed == old.stats.dead_lettered == 0


async def test_the_handler_is_the_stored_tasks_not_the_messages(
    deployment: Deployment, start_worker: StartWorker
) -> None:
    """A message naming another handler than its task's (stale, forged, or a client's own
    publish) runs the task's own handler: the name in the message only routes it."""
    ran: list[str] = []
    worker = await start_worker(pool_registry(ran, "stored"), concurrency=2)
    [task] = await deployment.enqueue(ONLY_SOME, [{"n": 1}])
    await deployment.publish_raw(
        orjson.dumps({"task_id": task.id, "name": "echo", "queue": deployment.queue})
    )
    done = await wait_for_task(deployment.store, task.id, TaskStatus.DONE)
    assert done.result == "stored", "the echo handler the message named ran instead"
    assert ran == ["stored"]
    await wait_until(lambda: worker.between_deliveries and worker.handled >= 1)


async def test_a_message_naming_a_handler_the_task_does_not_have_is_put_back(
    deployment: Deployment, start_worker: StartWorker, relay: OutboxRelay
) -> None:
    """The message names a handler this worker has, the stored task one it lacks: the
    claim refuses it, and it is left for a worker with the right handler."""
    without = await start_worker(concurrency=2)
    [task] = await deployment.enqueue(ONLY_SOME, [1])
    await deployment.publish_raw(
        orjson.dumps({"task_id": task.id, "name": "echo", "queue": deployment.queue})
    )
    await wait_until(lambda: without.stats.declined >= 1, timeout=15, what="put back")
    waiting = await deployment.store.get(task.id)
    assert (waiting.status, waiting.attempts) == (TaskStatus.PENDING, 0)
    assert without.stats.claimed == 0
