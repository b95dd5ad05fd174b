"""Lost messages are sent again; a healthy backlog is not.

A due pending task with no outbox row was published. It may wait in RabbitMQ behind a
long backlog (nothing to do) or its message may be gone (a purged or deleted queue:
send it again). The rescuer tells them apart by asking RabbitMQ whether the queue
still holds messages.
"""

from __future__ import annotations

from typing import Any

import pytest

from krolik.maintenance import LeaseRescuer
from krolik.store.records import NewTask
from tests.integration.conftest import outbox_count, queue_depth, topology_of
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKLOG = 50_000


async def test_a_backlog_waiting_in_rabbitmq_gets_no_duplicate_and_a_purged_one_is_resent(
    store, settings, make_settings, make_broker, make_relay, amqp
):
    quick = make_settings(
        maintenance={"redispatch_after_seconds": 1.0, "rescue_interval_seconds": 0.1}
    )
    for start in range(0, BACKLOG, 5_000):
        await store.enqueue(
            [NewTask(name="echo", queue="default", payload=i) for i in range(start, start + 5_000)]
        )
    relay = make_relay(
        relay_settings=make_settings(relay={"batch_size": 2000, "poll_seconds": 0.05})
    )
    await wait_until(lambda: _outbox_empty(store), timeout=60, what="the backlog is published")
    name = topology_of(settings).queue("default").name
    published = await queue_depth(amqp, name)
    assert published >= BACKLOG // settings.relay.tasks_per_message

    broker = make_broker()
    await broker.connect()
    rescuer = LeaseRescuer(store, quick.maintenance, broker=broker)
    rescuer.start()
    try:
        # Every task is due, untouched and without an outbox row for longer than
        # redispatch_after, several checks over.
        for _ in range(30):
            await rescuer.wait_tick()
        assert rescuer.redispatched == 0
        assert await outbox_count(store) == 0
        assert await queue_depth(amqp, name) == published, "a duplicate message was sent"

        await (await amqp.get_queue(name)).purge()  # the messages are lost now
        await wait_until(
            lambda: rescuer.redispatched == BACKLOG, timeout=30, what="every task is resent"
        )
    finally:
        await rescuer.stop()
    await wait_until(lambda: _outbox_empty(store), timeout=60, what="they are published")
    assert await queue_depth(amqp, name) >= BACKLOG // settings.relay.tasks_per_message
    await relay.stop()


async def _outbox_empty(store: Any) -> bool:
    return await outbox_count(store) == 0
