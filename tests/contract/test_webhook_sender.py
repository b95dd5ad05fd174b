"""The webhook sender on both stores: woken by change notices, never held up by a dead
endpoint, giving up when a delivery's time runs out or its URL turns out internal, and
sharing the work with other senders without calling twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from krolik.broker.base import Broker
from krolik.broker.memory import MemoryBroker
from krolik.results.notices import ChangeNotices
from krolik.settings import WebhookSettings
from krolik.states import DeliveryState
from krolik.store.base import TaskStore
from krolik.store.records import Delivery
from krolik.webhooks import DELIVERY_HEADER
from krolik.webhooks.sender import WebhookSender
from tests.contract.store.support import add, take
from tests.support.receiver import Receiver, free_port, receiving


def webhook_settings(**fields: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "allowed_hosts": ["127.0.0.1/32"],
        "signing_keys": {"k": "secret"},
        "poll_seconds": 0.05,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.1,
        "timeout_seconds": 2,
    }
    return WebhookSettings(**(values | fields))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as the_receiver:
        yield the_receiver


@pytest.fixture
async def senders(any_store: TaskStore) -> AsyncIterator[list[WebhookSender]]:
    """Senders the test starts (``start``); stopped after it."""
    made: list[WebhookSender] = []
    yield made
    for sender in made:
        await sender.stop()


def start(
    made: list[WebhookSender], store: TaskStore, broker: Broker | None = None, **fields: Any
) -> WebhookSender:
    sender = WebhookSender(store, broker or MemoryBroker(), webhook_settings(**fields))
    sender.start()
    made.append(sender)
    return sender


async def ended(store: TaskStore, url: str) -> int:
    """A task that names ``url``, run and done: its delivery is due."""
    task = await add(store, webhook_url=url)
    _, run = await take(store, task)
    assert await store.complete(run, {"ok": True})
    return task.id


async def settled(store: TaskStore, task_id: int, timeout: float = 10) -> Delivery:
    """The task's one delivery once it is no longer pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        [delivery] = await store.deliveries_of(task_id)
        if delivery.state is not DeliveryState.PENDING:
            return delivery
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still pending after {timeout}s: {delivery}")
        await asyncio.sleep(0.02)


async def test_a_change_notice_wakes_the_sender_long_before_its_poll(
    any_store: TaskStore, any_broker: Broker, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    start(senders, any_store, any_broker, poll_seconds=60)
    await asyncio.sleep(0)  # let it take its first (empty) look and start listening
    await senders[0].wait_tick()
    notices = ChangeNotices(any_broker)
    task = await add(any_store, webhook_url=receiver.url())
    _, run = await take(any_store, task)
    assert await any_store.complete(run, None)
    # Until the sender listens, a notice goes nowhere: send until one gets through.
    for _ in range(100):
        notices.changed(await any_store.get(task.id), ended=True)  # type: ignore[arg-type]
        await notices.flush()
        try:
            await receiver.wait_for(1, timeout=0.1)
            break
        except AssertionError:
            continue
    assert len(receiver.calls) == 1


async def test_a_dead_endpoint_does_not_hold_up_a_live_one(
    any_store: TaskStore, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"  # refuses connections
    dead = [await ended(any_store, nobody) for _ in range(5)]
    live = await ended(any_store, receiver.url())
    start(senders, any_store, concurrency=4)
    delivery = await settled(any_store, live)
    assert delivery.state is DeliveryState.DELIVERED
    for task_id in dead:
        [waiting] = await any_store.deliveries_of(task_id)
        assert waiting.state is DeliveryState.PENDING
        if waiting.attempts:
            assert waiting.error is not None
            assert "Connect" in waiting.error


async def test_a_delivery_whose_time_runs_out_is_given_up(
    any_store: TaskStore, senders: list[WebhookSender]
) -> None:
    task_id = await ended(any_store, f"http://127.0.0.1:{free_port()}/hook")
    start(senders, any_store, retry_for_seconds=0.5)
    delivery = await settled(any_store, task_id)
    assert delivery.state is DeliveryState.FAILED
    assert delivery.attempts >= 2
    assert delivery.error is not None
    assert "Connect" in delivery.error


async def test_an_internal_url_is_given_up_before_any_request(
    any_store: TaskStore, senders: list[WebhookSender]
) -> None:
    # Written past the submit-time check, as a URL allowed then (the list has changed
    # since) would be: the sender checks again before each try.
    task_id = await ended(any_store, f"http://localhost:{free_port()}/hook")
    start(senders, any_store, allowed_hosts=[])
    delivery = await settled(any_store, task_id)
    assert (delivery.state, delivery.attempts) == (DeliveryState.FAILED, 1)
    assert delivery.status_code is None
    assert delivery.error is not None
    assert "internal" in delivery.error


async def test_senders_share_deliveries_and_call_each_once(
    any_store: TaskStore, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    tasks = [await ended(any_store, receiver.url()) for _ in range(40)]
    first, second = start(senders, any_store), start(senders, any_store)
    calls = await receiver.wait_for(len(tasks))
    for task_id in tasks:
        assert (await settled(any_store, task_id)).state is DeliveryState.DELIVERED
    ids = [call.headers[DELIVERY_HEADER.lower()] for call in calls]
    assert len(ids) == len(set(ids)) == len(tasks)
    assert first.attempted + second.attempted == len(tasks)


async def test_a_request_in_flight_at_stop_is_tried_again_by_the_next_sender(
    any_store: TaskStore, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.hold = asyncio.Event()  # no answer while the first sender lives
    task_id = await ended(any_store, receiver.url())
    first = start(senders, any_store, timeout_seconds=30)
    await receiver.wait_for(1)
    await first.stop(grace_seconds=0.1)
    receiver.hold.set()
    [held] = await any_store.deliveries_of(task_id)
    assert (held.state, held.attempts) == (DeliveryState.PENDING, 1)
    # The claim would run out after the timeout; a restart takes it at once, by the test.
    await _forget_claims(any_store)
    start(senders, any_store)
    delivery = await settled(any_store, task_id)
    assert (delivery.state, delivery.attempts) == (DeliveryState.DELIVERED, 2)


async def _forget_claims(store: TaskStore) -> None:
    from sqlalchemy import update

    from krolik.store.sql.store import SqlTaskStore
    from krolik.store.tables import deliveries

    assert isinstance(store, SqlTaskStore)
    async with store.engine.begin() as conn:
        await conn.execute(update(deliveries).values(claimed_until=None))


async def test_notices_of_submits_and_starts_do_not_wake_the_sender(
    any_store: TaskStore, senders: list[WebhookSender]
) -> None:
    """Each would cost a claim statement for nothing; only an end may make a delivery."""
    broker = MemoryBroker()
    await broker.connect()
    sender = start(senders, any_store, broker, poll_seconds=60)
    while sender._listener is None:
        await sender.wait_tick()
    await sender.wait_tick()  # whatever listening itself set off is over
    notices = ChangeNotices(broker)
    task = await add(any_store, webhook_url="http://127.0.0.1:9/hook")
    sender.ticked.clear()
    notices.task_submitted(task)
    notices.task_started(task)
    await notices.flush()
    await asyncio.sleep(0.1)  # a tick, had it been woken, is over by now
    assert not sender.ticked.is_set()
    notices.changed(task, ended=True)
    await notices.flush()
    await asyncio.wait_for(sender.ticked.wait(), 5)
