"""The transactional outbox: a task and the record that dispatches it commit together,
the relay forgets the record only once RabbitMQ confirmed the message, an API keeps
accepting tasks while RabbitMQ is down, and relays running side by side publish each
task once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from krolik.broker.wire import TaskMessage
from krolik.registry import Registry
from krolik.relay import handing_over
from krolik.states import TaskStatus
from krolik.store.records import NewTask, TaskFilter
from krolik.store.tables import outbox, tasks
from tests.conftest import wait_for_task
from tests.integration.conftest import (
    count_tasks,
    outbox_count,
    queue_depth,
    topology_of,
    wait_until,
)


async def test_enqueue_commits_the_task_and_its_outbox_row_together(store):
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload=1)])
    assert enqueued.created
    # Nothing has relayed anything: the row was written by the enqueue itself.
    assert await outbox_count(store, enqueued.task.id) == 1
    assert enqueued.task.status is TaskStatus.PENDING

    # One transaction: a batch whose second task PostgreSQL refuses leaves nothing behind.
    with pytest.raises(DBAPIError, match="Unicode"):
        await store.enqueue(
            [
                NewTask(name="echo", queue="default", payload="fine"),
                NewTask(name="echo", queue="default", payload="NUL \u0000 is not storable"),
            ]
        )
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(tasks.c.id))).scalars().all() == [enqueued.task.id]
        assert (await conn.execute(select(outbox.c.task_id))).scalars().all() == [enqueued.task.id]


async def test_relay_deletes_the_row_only_after_the_broker_confirmed(
    store, settings, make_relay, amqp
):
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload="x")])
    relay = make_relay(start=False)

    assert await relay.tick() is False  # a partial batch: nothing more to do at once
    assert relay.published == 1
    assert await outbox_count(store, enqueued.task.id) == 0

    queue = await amqp.get_queue(topology_of(settings).queue("default").name)
    message = await queue.get(no_ack=True, fail=False)
    assert message is not None
    assert TaskMessage.decode(message.body) == TaskMessage(enqueued.task.id, "echo", "default")


async def test_relay_keeps_the_row_when_publishing_fails_and_publishes_it_later(
    store, make_relay, proxied_broker, rabbit_proxy, make_worker
):
    broker = proxied_broker()
    await broker.connect()
    relay = make_relay(broker, start=False)
    await make_worker()  # consumes straight from RabbitMQ, not through the proxy
    await rabbit_proxy.cut()
    [enqueued] = await store.enqueue([NewTask(name="echo", queue="default", payload="later")])

    # Bounded by the broker's publish timeout (1 s here), not by RabbitMQ's return.
    assert await asyncio.wait_for(relay.tick(), 5) is False
    assert relay.published == 0
    async with store.engine.connect() as conn:
        stmt = select(outbox).where(outbox.c.task_id == enqueued.task.id)
        rows = (await conn.execute(stmt)).all()
    assert len(rows) == 1
    assert rows[0].claimed_until is None, "a failed publish gives the row back at once"
    assert (await store.get(enqueued.task.id)).status is TaskStatus.PENDING

    await rabbit_proxy.restore()
    relay.start()
    done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE)
    assert done.result == "later"
    assert done.attempts == 1
    # The relay counts a message after deleting its outbox row: the worker may be faster.
    await wait_until(lambda: relay.published == 1, what="the relay counted the task")
    assert await outbox_count(store, enqueued.task.id) == 0


async def _handed(store, count: int, claim: float = 60.0):
    """Tasks enqueued as the API does: their outbox rows come back claimed for the caller."""
    enqueued = await store.enqueue(
        [NewTask(name="echo", queue="default", payload=i) for i in range(count)],
        claim_outbox_seconds=claim,
    )
    assert all(item.outbox is not None for item in enqueued)
    return enqueued


async def test_rows_are_handed_only_to_an_idle_connected_relay(
    store, make_relay, proxied_broker, rabbit_proxy
):
    relay = make_relay(start=False)
    assert handing_over(relay) is None, "a relay that is not running would never publish"
    relay.start()
    await relay.wait_tick()  # connected, nothing to do
    assert handing_over(relay) == relay.settings.claim_seconds

    [item] = await _handed(store, 1)
    relay.hand_over([item.outbox])
    assert handing_over(relay) is None, "busy: the next rows wait for its claim instead"
    await relay.wait_tick()
    assert handing_over(relay) == relay.settings.claim_seconds

    await rabbit_proxy.cut()
    away = make_relay(proxied_broker())
    await away.wait_tick()  # it tried to connect, and could not
    assert handing_over(away) is None, "rows for a relay without a broker would wait 30 s"


async def test_relay_publishes_the_rows_it_was_handed_without_claiming_them(
    store, settings, make_relay, amqp
):
    enqueued = await _handed(store, 3)
    assert await store.claim_outbox(100, 60) == [], "handed rows are claimed already"
    relay = make_relay(start=False)
    relay.hand_over(item.outbox for item in enqueued)

    assert await relay.tick() is False
    assert relay.published == 3
    assert await outbox_count(store) == 0
    queue = await amqp.get_queue(topology_of(settings).queue("default").name)
    message = await queue.get(no_ack=True, fail=False)
    assert message is not None
    assert [m.task_id for m in TaskMessage.decode_many(message.body)] == [
        item.task.id for item in enqueued
    ]


async def test_under_load_the_relay_deletes_the_rows_of_several_ticks_at_once(
    store, make_settings, make_relay
):
    relay = make_relay(relay_settings=make_settings(relay={"batch_size": 4}), start=False)
    arriving = [[item.outbox for item in await _handed(store, 2)] for _ in range(3)]
    publish = relay.broker.publish

    async def publish_as_more_arrive(messages, per_message=1):
        if arriving:  # requests keep coming while the relay waits for the confirms
            relay.hand_over(arriving.pop(0))
        return await publish(messages, per_message)

    relay.broker.publish = publish_as_more_arrive
    relay.hand_over(arriving.pop(0))
    assert await relay.tick() is True  # 2 published, 2 handed meanwhile: delete later
    assert (relay.published, await outbox_count(store)) == (2, 6)
    assert await relay.tick() is True  # 4 confirmed: a batch's worth, deleted together
    assert (relay.published, await outbox_count(store)) == (4, 2)
    assert await relay.tick() is False  # nothing more handed: deleted at once
    assert (relay.published, await outbox_count(store)) == (6, 0)


async def test_handed_rows_that_cannot_be_published_go_back_to_the_outbox(
    store, make_relay, proxied_broker, rabbit_proxy
):
    broker = proxied_broker()
    await broker.connect()
    relay = make_relay(broker, start=False)
    [item] = await _handed(store, 1)
    await rabbit_proxy.cut()
    relay.hand_over([item.outbox])

    assert await asyncio.wait_for(relay.tick(), 5) is False
    assert relay.published == 0
    [entry] = await store.claim_outbox(100, 60)  # any relay may publish it at once
    assert entry.task_id == item.task.id


async def test_a_stopping_relay_gives_back_the_rows_it_was_handed(store, make_relay):
    relay = make_relay(start=False)
    [item] = await _handed(store, 1)
    relay.hand_over([item.outbox])
    await relay.stop()
    [entry] = await store.claim_outbox(100, 60)
    assert entry.task_id == item.task.id


async def test_api_accepts_tasks_while_rabbitmq_is_down_and_they_run_once_it_is_back(
    settings, store, proxied_broker, rabbit_proxy, make_api, make_worker
):
    await make_worker()
    await rabbit_proxy.cut()
    api = await make_api(settings, store=store, broker=proxied_broker())
    relay = api.app.state.node.relay
    await relay.wait_tick()  # it tried to connect, and could not
    ready = await api.get("/health/ready")  # (this also opens the store's first connection)
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "broker": "unavailable"}

    started = time.monotonic()
    response = await api.post("/tasks", json={"name": "echo", "payload": {"n": 1}})
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    assert elapsed < 1.0
    task_id = response.json()["id"]

    await relay.wait_tick()
    await relay.wait_tick()
    task = await store.get(task_id)
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0
    assert await outbox_count(store, task_id) == 1
    assert relay.published == 0

    await rabbit_proxy.restore()
    done = await wait_for_task(store, task_id, TaskStatus.DONE)
    assert done.result == {"n": 1}
    assert done.attempts == 1
    # The relay forgets the row once the confirm is in; the worker may finish first.
    await wait_until(lambda: _outbox_empty(store, task_id), what="the relay deleted the outbox row")
    assert (await api.get("/health/ready")).status_code == 200


async def _outbox_empty(store, task_id: int) -> bool:
    return await outbox_count(store, task_id) == 0


async def test_two_relays_publish_every_task_exactly_once(
    store, make_settings, make_relay, spawn_worker
):
    count = 200
    runs: Counter[int] = Counter()
    registry = Registry()

    @registry.task(name="count")
    async def count_run(payload: int, context) -> int:
        runs[context.task_id] += 1
        return payload

    workers = [await spawn_worker(registry, concurrency=16) for _ in range(2)]
    await store.enqueue([NewTask(name="count", queue="default", payload=i) for i in range(count)])
    assert await outbox_count(store) == count

    # Small batches, started together: the two relays really compete for the rows.
    relay_settings = make_settings(relay={"batch_size": 20, "poll_seconds": 0.05})
    relays = [make_relay(relay_settings=relay_settings, start=False) for _ in range(2)]
    for relay in relays:
        relay.start()

    async def all_done() -> bool:
        return await count_tasks(store, "done") == count

    await wait_until(all_done, timeout=30, what=f"{count} tasks done")
    finished = await store.list_tasks(TaskFilter(), before_id=None, limit=count + 1)
    assert len(finished) == count
    assert {t.attempts for t in finished} == {1}
    assert sorted(t.result for t in finished) == list(range(count))
    assert len(runs) == count
    assert set(runs.values()) == {1}, "a handler ran twice for one task"
    assert sum(relay.published for relay in relays) == count, "a task was published twice"
    assert all(relay.published > 0 for relay in relays), "only one relay did any work"
    assert sum(w.stats.skipped for w in workers) == 0
    assert sum(w.stats.claimed for w in workers) == count
    assert await outbox_count(store) == 0


async def test_a_task_due_later_is_not_published_before_it_is_due(store, relay, make_worker):
    worker = await make_worker()
    due_in = 1.0
    [delayed, scheduled] = await store.enqueue(
        [
            NewTask(name="echo", queue="default", payload="delayed", delay_seconds=due_in),
            NewTask(
                name="echo",
                queue="default",
                payload="scheduled",
                run_at=datetime.now(UTC) + timedelta(seconds=due_in),
            ),
        ]
    )
    await relay.wait_tick()
    await relay.wait_tick()
    assert relay.published == 0
    assert await outbox_count(store) == 2
    for enqueued in (delayed, scheduled):
        task = await store.get(enqueued.task.id)
        assert task.status is TaskStatus.PENDING
        assert task.attempts == 0

    for enqueued in (delayed, scheduled):
        done = await wait_for_task(store, enqueued.task.id, TaskStatus.DONE, timeout=5)
        assert done.started_at >= done.run_at
        assert done.attempts == 1
    # The relay counts a message after deleting its outbox rows: the worker may be faster.
    await wait_until(lambda: relay.published == 2, what="the relay counted both tasks")
    assert worker.stats.skipped == 0, "a message came before its task was due"


async def test_queue_is_empty_after_the_relay_and_a_worker_are_done(
    store, settings, relay, make_worker, amqp
):
    """The relay publishes to the queue the worker consumes: nothing is left stranded."""
    await make_worker()
    enqueued = await store.enqueue(
        [NewTask(name="echo", queue="default", payload=i) for i in range(5)]
    )
    relay.wake()
    await asyncio.gather(*(wait_for_task(store, e.task.id, TaskStatus.DONE) for e in enqueued))
    assert await queue_depth(amqp, topology_of(settings).queue("default").name) == 0

    # The relay deletes confirmed rows after the publish returns: a worker may finish the
    # tasks first (seen through PgBouncer), so the outbox is empty soon, not at once.
    async def outbox_empty() -> bool:
        return await outbox_count(store) == 0

    await wait_until(outbox_empty, 5, "the relay deleted the published rows")
