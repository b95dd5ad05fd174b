"""The Broker contract, once, for RabbitMQ (production) and the in-process broker (embedded).

Waiting is always for an event (a delivery arriving in an ``Inbox``), never for time.
To show that something was *not* delivered, a later message is published as a marker:
queues are FIFO, so anything wrongly delivered would have come before the marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from krolik.broker.base import Broker, Delivery, Subscription
from krolik.broker.topology import MAX_REASON_LENGTH, ORIGIN_HEADER, REASON_HEADER
from krolik.broker.wire import TaskMessage, encode_messages
from krolik.errors import BrokerUnavailable

DEFAULT = "default"
OTHER = "other"
WAIT = 5.0


def message(task_id: int, queue: str = DEFAULT) -> TaskMessage:
    return TaskMessage(task_id=task_id, name="echo", queue=queue)


class Inbox:
    """A handler that leaves deliveries unsettled and hands them to the test in order."""

    def __init__(self) -> None:
        self._arrived: asyncio.Queue[Delivery] = asyncio.Queue()
        self.unsettled = 0
        self.most_unsettled = 0

    async def handler(self, delivery: Delivery) -> None:
        self.unsettled += 1
        self.most_unsettled = max(self.most_unsettled, self.unsettled)
        await self._arrived.put(delivery)

    async def next(self) -> Delivery:
        return await asyncio.wait_for(self._arrived.get(), WAIT)

    async def next_message(self) -> TaskMessage:
        delivery = await self.next()
        await self.ack(delivery)
        return TaskMessage.decode(delivery.body)

    async def ack(self, delivery: Delivery) -> None:
        self.unsettled -= 1
        await delivery.ack()

    def empty(self) -> bool:
        return self._arrived.empty()


Subscribe = Callable[[Sequence[str], int, Inbox], Awaitable[Subscription]]


@pytest.fixture
async def subscribe(any_broker: Broker) -> AsyncIterator[Subscribe]:
    """Consume with an ``Inbox``; every subscription is cancelled at the end of the test."""
    made: list[Subscription] = []

    async def factory(queues: Sequence[str], prefetch: int, inbox: Inbox) -> Subscription:
        subscription = await any_broker.consume(list(queues), prefetch, inbox.handler)
        made.append(subscription)
        return subscription

    yield factory
    for subscription in made:
        await subscription.cancel()


async def test_a_published_message_reaches_its_own_queue_only(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    for sent in (message(1, DEFAULT), message(2, OTHER), message(3, DEFAULT)):
        await any_broker.publish([sent])
    defaults, others = Inbox(), Inbox()
    await subscribe([DEFAULT], 10, defaults)
    first = await defaults.next()
    assert first.redelivered is False
    assert TaskMessage.decode(first.body) == message(1, DEFAULT)
    await defaults.ack(first)
    assert await defaults.next_message() == message(3, DEFAULT)  # not 2: it went to OTHER

    await subscribe([OTHER], 10, others)
    assert await others.next_message() == message(2, OTHER)
    assert defaults.empty()


async def test_one_subscription_consumes_several_queues(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    inbox = Inbox()
    await subscribe([DEFAULT, OTHER], 10, inbox)
    await any_broker.publish([message(1, DEFAULT), message(2, OTHER)])
    got = {await inbox.next_message(), await inbox.next_message()}
    assert got == {message(1, DEFAULT), message(2, OTHER)}


async def test_prefetch_bounds_the_unsettled_deliveries(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    await any_broker.publish([message(i) for i in range(1, 6)])
    inbox = Inbox()
    await subscribe([DEFAULT], 2, inbox)
    held = [await inbox.next(), await inbox.next()]
    seen = [TaskMessage.decode(d.body).task_id for d in held]
    # Each ack lets exactly one more through. An unbounded consumer would have had
    # all five pushed to it before the first ack arrived.
    while len(seen) < 5:
        await inbox.ack(held.pop(0))
        held.append(await inbox.next())
        seen.append(TaskMessage.decode(held[-1].body).task_id)
    for delivery in held:
        await inbox.ack(delivery)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    assert inbox.most_unsettled == 2


async def test_prefetch_applies_to_each_queue_of_a_subscription(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    """A full window on one queue does not starve another queue of the same subscription."""
    await any_broker.publish([message(1, DEFAULT), message(2, DEFAULT)])
    inbox = Inbox()
    await subscribe([DEFAULT, OTHER], 1, inbox)
    first = await inbox.next()
    assert TaskMessage.decode(first.body) == message(1, DEFAULT)
    await any_broker.publish([message(3, OTHER)])
    second = await inbox.next()  # while 1 is still unsettled
    assert TaskMessage.decode(second.body) == message(3, OTHER)
    await inbox.ack(first)
    assert await inbox.next_message() == message(2, DEFAULT)
    await inbox.ack(second)
    assert inbox.most_unsettled == 2


async def test_ack_removes_the_message(any_broker: Broker, subscribe: Subscribe) -> None:
    await any_broker.publish([message(1)])
    inbox = Inbox()
    subscription = await subscribe([DEFAULT], 10, inbox)
    assert await inbox.next_message() == message(1)
    await subscription.cancel()

    await any_broker.publish([message(2)])
    later = Inbox()
    await subscribe([DEFAULT], 10, later)
    assert await later.next_message() == message(2)  # 1 is gone for good


async def test_requeue_delivers_again_marked_redelivered(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    await any_broker.publish([message(1)])
    inbox = Inbox()
    await subscribe([DEFAULT], 10, inbox)
    first = await inbox.next()
    assert first.redelivered is False
    inbox.unsettled -= 1
    await first.requeue()
    again = await inbox.next()
    assert again.body == first.body
    assert again.redelivered is True
    await inbox.ack(again)


async def test_dead_letter_moves_the_message_aside_with_its_reason(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    assert await any_broker.dead_lettered() == []
    await any_broker.publish([message(1, OTHER)])
    inbox = Inbox()
    await subscribe([OTHER], 10, inbox)
    bad = await inbox.next()
    inbox.unsettled -= 1
    await bad.dead_letter("no handler is registered under the name 'echo'")

    await any_broker.publish([message(2, OTHER)])
    assert await inbox.next_message() == message(2, OTHER)  # 1 did not come back
    [(body, headers)] = await any_broker.dead_lettered()
    assert TaskMessage.decode(body) == message(1, OTHER)
    assert headers[REASON_HEADER] == "no handler is registered under the name 'echo'"
    assert headers[ORIGIN_HEADER] == OTHER
    assert len(await any_broker.dead_lettered()) == 1  # peeking removes nothing


async def test_a_long_dead_letter_reason_is_cut_to_its_limit(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    await any_broker.publish([message(1)])
    inbox = Inbox()
    await subscribe([DEFAULT], 10, inbox)
    reason = "x" * (MAX_REASON_LENGTH * 3)
    await (await inbox.next()).dead_letter(reason)
    [(_, headers)] = await any_broker.dead_lettered()
    assert headers[REASON_HEADER] == reason[:MAX_REASON_LENGTH]


async def test_cancelling_a_subscription_gives_unsettled_deliveries_back(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    await any_broker.publish([message(1), message(2)])
    first = Inbox()
    subscription = await subscribe([DEFAULT], 10, first)
    held = [await first.next(), await first.next()]
    await subscription.cancel()

    second = Inbox()
    await subscribe([DEFAULT], 10, second)
    again = [await second.next(), await second.next()]
    assert sorted(d.body for d in again) == sorted(d.body for d in held)
    assert all(d.redelivered for d in again)
    for delivery in again:
        await second.ack(delivery)


async def test_inspect_queue_reports_depth_and_consumers(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    assert await any_broker.inspect_queue("never-used") is None
    await any_broker.publish([message(1, OTHER), message(2, OTHER)])
    info = await any_broker.inspect_queue(OTHER)
    assert info is not None
    assert (info.messages, info.consumers) == (2, 0)

    inbox = Inbox()
    await subscribe([OTHER], 10, inbox)
    info = await any_broker.inspect_queue(OTHER)
    assert info is not None
    assert info.consumers == 1
    await inbox.next_message()
    await inbox.next_message()


async def test_ping_tells_whether_the_broker_is_connected(any_broker: Broker) -> None:
    await any_broker.ping()
    await any_broker.close()
    with pytest.raises(BrokerUnavailable):
        await any_broker.ping()
    with pytest.raises(BrokerUnavailable):
        await any_broker.publish([message(1)])
    await any_broker.connect()
    await any_broker.ping()


async def test_close_ends_every_subscription(any_broker: Broker, subscribe: Subscribe) -> None:
    await any_broker.publish([message(1)])
    old = Inbox()
    await subscribe([DEFAULT], 10, old)
    held = await old.next()
    await any_broker.close()
    await any_broker.connect()

    new = Inbox()
    await subscribe([DEFAULT], 10, new)
    again = await new.next()  # given back by the closed subscription
    assert (again.body, again.redelivered) == (held.body, True)
    await new.ack(again)
    await any_broker.publish([message(2)])
    assert await new.next_message() == message(2)  # the closed subscription takes nothing
    assert old.empty()


# -- packed messages -----------------------------------------------------------------
async def next_tasks(inbox: Inbox) -> list[TaskMessage]:
    """The tasks of the next delivery, which is acked."""
    delivery = await inbox.next()
    await inbox.ack(delivery)
    return TaskMessage.decode_many(delivery.body)


async def test_publish_packs_up_to_per_message_tasks_of_a_queue_in_order(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    sent = [message(i) for i in range(1, 8)]
    await any_broker.publish(sent, per_message=3)
    info = await any_broker.inspect_queue(DEFAULT)
    assert info is not None
    assert info.messages == 3
    inbox = Inbox()
    await subscribe([DEFAULT], 10, inbox)
    got = [await next_tasks(inbox) for _ in range(3)]
    assert [len(tasks) for tasks in got] == [3, 3, 1]
    assert [task for tasks in got for task in tasks] == sent
    await any_broker.publish([message(99)])
    assert await inbox.next_message() == message(99)  # a marker: nothing else was queued


async def test_a_lone_task_is_published_in_the_single_task_form(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    """Workers of the last release read only this form: packing must not change it."""
    await any_broker.publish([message(1), message(2, OTHER)], per_message=10)
    inbox = Inbox()
    await subscribe([DEFAULT], 10, inbox)
    delivery = await inbox.next()
    await inbox.ack(delivery)
    assert delivery.body == message(1).encode()


async def test_tasks_of_two_queues_are_never_packed_together(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    sent = [message(1), message(2, OTHER), message(3), message(4, OTHER), message(5)]
    await any_broker.publish(sent, per_message=10)
    defaults, others = Inbox(), Inbox()
    await subscribe([DEFAULT], 10, defaults)
    await subscribe([OTHER], 10, others)
    assert await next_tasks(defaults) == [message(1), message(3), message(5)]
    assert await next_tasks(others) == [message(2, OTHER), message(4, OTHER)]
    await any_broker.publish([message(6), message(7, OTHER)])
    assert await defaults.next_message() == message(6)  # markers: one message per queue
    assert await others.next_message() == message(7, OTHER)


async def test_dead_letter_part_sets_one_task_aside_and_leaves_the_message_unsettled(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    packed = [message(1, OTHER), message(2, OTHER), message(3, OTHER)]
    await any_broker.publish(packed, per_message=3)
    inbox = Inbox()
    await subscribe([OTHER], 1, inbox)
    delivery = await inbox.next()
    assert delivery.body == encode_messages(packed)
    await delivery.dead_letter_part(packed[1], "task 2 does not exist")

    [(body, headers)] = await any_broker.dead_lettered()
    assert body == message(2, OTHER).encode()  # the single-task form, not the packed one
    assert TaskMessage.decode(body) == message(2, OTHER)
    assert headers[REASON_HEADER] == "task 2 does not exist"
    assert headers[ORIGIN_HEADER] == OTHER

    await inbox.ack(delivery)  # still ours to settle
    await any_broker.publish([message(4, OTHER)])
    assert await inbox.next_message() == message(4, OTHER)  # the packed one is gone
    assert len(await any_broker.dead_lettered()) == 1
    assert inbox.most_unsettled == 1


async def test_a_message_with_a_dead_lettered_part_can_still_be_requeued(
    any_broker: Broker, subscribe: Subscribe
) -> None:
    packed = [message(1), message(2)]
    await any_broker.publish(packed, per_message=2)
    inbox = Inbox()
    await subscribe([DEFAULT], 10, inbox)
    delivery = await inbox.next()
    await delivery.dead_letter_part(packed[0], "x" * (MAX_REASON_LENGTH * 2))
    inbox.unsettled -= 1
    await delivery.requeue()
    again = await inbox.next()
    assert (again.body, again.redelivered) == (delivery.body, True)
    await inbox.ack(again)
    [(body, headers)] = await any_broker.dead_lettered()
    assert body == message(1).encode()
    assert headers[REASON_HEADER] == "x" * MAX_REASON_LENGTH
