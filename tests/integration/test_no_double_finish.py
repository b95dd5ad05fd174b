"""At most one finish per run: duplicate messages run nothing, stale actors change
nothing, and a message is acked as soon as its task is claimed, so a long run leaves
nothing in RabbitMQ to be delivered again."""

from __future__ import annotations

import asyncio
from collections import Counter

from krolik.broker.wire import TaskMessage
from krolik.registry import Registry
from krolik.states import TaskStatus
from krolik.store.records import NewTask, RunRef
from tests.conftest import wait_for_task
from tests.integration.conftest import queue_depth, stop_consuming, topology_of, wait_until


async def test_a_message_delivered_twice_runs_its_handler_once(
    store, settings, broker, make_worker, amqp
):
    runs: Counter[int] = Counter()
    registry = Registry()

    @registry.task(name="dup.count")
    async def count(payload, context) -> int:
        runs[context.task_id] += 1
        await asyncio.sleep(0.05)  # overlap with the duplicate's delivery
        return payload

    workers = [await make_worker(registry) for _ in range(2)]

    def skipped() -> int:
        return sum(w.stats.skipped for w in workers)

    # No relay: the test publishes, twice, the message the relay would have.
    [enqueued] = await store.enqueue([NewTask(name="dup.count", queue="default", payload=7)])
    message = TaskMessage(enqueued.task.id, "dup.count", "default")
    await broker.publish([message, message])
    done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE)
    await wait_until(lambda: skipped() == 1, what="the duplicate was skipped")
    assert done.attempts == 1
    assert runs == {enqueued.task.id: 1}
    assert sum(w.stats.claimed for w in workers) == 1

    # A duplicate of a task long done: skipped too, and the task is untouched.
    await broker.publish([message])
    await wait_until(lambda: skipped() == 2, what="the late duplicate was skipped")
    assert runs == {enqueued.task.id: 1}
    assert await store.get(enqueued.task.id) == done

    # Skipped deliveries were acked: closing the consumers gives nothing back.
    for worker in workers:
        await worker.wait_for_idle()
        await stop_consuming(worker)
    assert await queue_depth(amqp, topology_of(settings).queue("default").name) == 0


ECHO = {"echo": 3}
"""A worker's handlers for claims: echo, with 3 attempts by default."""


async def test_the_store_lets_only_the_owner_of_the_current_attempt_finish(store):
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=None)])
    task_id = enqueued.task.id

    claimed = await store.claim(task_id, "worker-a", 30, ECHO)
    assert claimed is not None
    assert claimed.status is TaskStatus.PROCESSING
    assert claimed.attempts == 1
    assert claimed.max_attempts == 3
    assert await store.claim(task_id, "worker-b", 30, ECHO) is None
    assert await store.claim(task_id, "worker-a", 30, ECHO) is None

    owner = RunRef.of(claimed)
    older = RunRef(task_id, claimed.run_token - 1, 1, "worker-a")
    newer = RunRef(task_id, claimed.run_token + 1, 1, "worker-a")
    for stale in (older, newer):
        assert not await store.complete(stale, "x")
        assert not await store.fail(stale, "x", None)
        assert not await store.retry_later(stale, "x", None, 0)
        assert not await store.release(stale)
        assert not await store.mark_cancelled(stale)
    assert await store.heartbeat([older, newer], 30) == {}
    assert await store.get(task_id) == claimed, "a stale actor changed the task"
    assert await store.heartbeat([owner], 30) == {owner: False}

    assert await store.complete(owner, "ok")
    assert not await store.complete(owner, "twice")
    assert not await store.fail(owner, "after done", None)
    done = await store.get(task_id)
    assert done.status is TaskStatus.DONE
    assert done.result == "ok"
    assert await store.claim(task_id, "worker-b", 30, ECHO) is None


async def test_a_task_not_yet_due_cannot_be_claimed(store):
    [enqueued] = await store.enqueue(
        [NewTask(name="echo", queue="default", payload=None, delay_seconds=60)]
    )
    assert await store.claim(enqueued.task.id, "worker-a", 30, ECHO) is None
    assert (await store.get(enqueued.task.id)).status is TaskStatus.PENDING


async def test_a_running_task_leaves_no_unacked_message_to_redeliver(
    store, settings, relay, make_worker, amqp
):
    started = asyncio.Event()
    finish = asyncio.Event()
    registry = Registry()

    @registry.task(name="ack.long")
    async def long_run(payload) -> str:
        started.set()
        await finish.wait()
        return "finished"

    first = await make_worker(registry)
    [enqueued] = await store.enqueue([NewTask(name="ack.long", queue="default", payload=None)])
    relay.wake()
    await asyncio.wait_for(started.wait(), 5)

    # Were the message still unacked, closing the consumer would put it back in the queue.
    await stop_consuming(first)
    queue_name = topology_of(settings).queue("default").name
    assert await queue_depth(amqp, queue_name) == 0

    # A new consumer gets nothing but what comes after (FIFO: a requeued message would be
    # ahead of the sentinel, and one slot handles them in order).
    second = await make_worker(registry, concurrency=1)
    [sentinel] = await store.enqueue([NewTask(name="echo", queue="default", payload="s")])
    relay.wake()
    await wait_for_task(store, sentinel.task.id, TaskStatus.DONE)
    await second.wait_for_idle()
    assert second.stats.claimed == 1
    assert second.stats.skipped == 0

    finish.set()
    done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE)
    assert done.worker_id == first.worker_id
    assert done.attempts == 1
