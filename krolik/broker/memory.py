"""The in-process broker of the embedded mode: asyncio queues, no server.

It only wakes workers in the same process; the store stays the truth. What it
holds is lost when the process ends, which is why ``krolik dev`` re-dispatches
due pending tasks from the store when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from krolik.broker.base import (
    Broker,
    Delivery,
    DeliveryHandler,
    NoticeHandler,
    PublishResult,
    QueueInfo,
    Subscription,
)
from krolik.broker.topology import MAX_REASON_LENGTH, ORIGIN_HEADER, REASON_HEADER
from krolik.broker.wire import TaskMessage, encode_messages, pack
from krolik.errors import BrokerUnavailable


@dataclass
class _Queue:
    messages: deque[tuple[bytes, bool]] = field(default_factory=deque)
    """(body, redelivered) waiting for a consumer."""
    ready: asyncio.Condition = field(default_factory=asyncio.Condition)


class MemoryDelivery(Delivery):
    def __init__(
        self,
        broker: MemoryBroker,
        queue: str,
        body: bytes,
        redelivered: bool,
        on_settled: asyncio.Semaphore,
    ) -> None:
        self._broker = broker
        self._queue = queue
        self.body = body
        self.redelivered = redelivered
        self._on_settled = on_settled
        self._settled = False

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._on_settled.release()
        return True

    async def ack(self) -> None:
        self._settle()

    async def requeue(self) -> None:
        if self._settle():
            await self._broker.put(self._queue, self.body, redelivered=True)

    async def dead_letter(self, reason: str) -> None:
        if self._settle():
            self._broker.dead.append(
                (
                    self.body,
                    {REASON_HEADER: reason[:MAX_REASON_LENGTH], ORIGIN_HEADER: self._queue},
                )
            )

    async def dead_letter_part(self, message: TaskMessage, reason: str) -> None:
        headers = {REASON_HEADER: reason[:MAX_REASON_LENGTH], ORIGIN_HEADER: self._queue}
        self._broker.dead.append((message.encode(), headers))

    def give_back(self) -> bool:
        """An unsettled delivery returns to its queue when its consumer goes away."""
        return not self._settled and self._settle()


class MemorySubscription(Subscription):
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self.tasks: list[asyncio.Task[None]] = []
        self.unsettled: set[MemoryDelivery] = set()
        self.handlers: set[asyncio.Task[None]] = set()

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        for delivery in list(self.unsettled):
            if delivery.give_back():
                await self._broker.put(delivery._queue, delivery.body, redelivered=True)
        self.unsettled.clear()
        self._broker._subscriptions.discard(self)


class MemoryNotices(Subscription):
    def __init__(self, broker: MemoryBroker, handler: NoticeHandler) -> None:
        self._broker = broker
        self.handler = handler

    async def cancel(self) -> None:
        self._broker._listeners.discard(self)


class MemoryBroker(Broker):
    def __init__(self) -> None:
        self._listeners: set[MemoryNotices] = set()
        self._queues: dict[str, _Queue] = {}
        self.dead: list[tuple[bytes, dict[str, Any]]] = []
        self._consumers: dict[str, int] = {}
        self._subscriptions: set[MemorySubscription] = set()
        self._connected = False

    def _queue(self, name: str) -> _Queue:
        return self._queues.setdefault(name, _Queue())

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        """Disconnect; like a closed connection, this ends every subscription."""
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        self._listeners.clear()
        self._connected = False

    async def ping(self) -> None:
        if not self._connected:
            raise BrokerUnavailable("the in-process broker is closed")

    async def put(self, queue: str, body: bytes, *, redelivered: bool = False) -> None:
        target = self._queue(queue)
        async with target.ready:
            target.messages.append((body, redelivered))
            target.ready.notify()

    async def publish(self, messages: Sequence[TaskMessage], per_message: int = 1) -> PublishResult:
        await self.ping()
        for group in pack(messages, per_message):
            await self.put(group[0].queue, encode_messages(group))
        return PublishResult.all_confirmed(len(messages))

    async def publish_raw(self, queue: str, body: bytes) -> None:
        """Put any bytes on a queue (tests of malformed messages)."""
        await self.put(queue, body)

    def depth(self, queue: str) -> int:
        return len(self._queue(queue).messages)

    async def consume(
        self, queues: Sequence[str], prefetch: int, handler: DeliveryHandler
    ) -> Subscription:
        subscription = MemorySubscription(self)
        self._subscriptions.add(subscription)
        for name in queues:
            # One window per queue: RabbitMQ's prefetch, too, counts per consumer.
            window = asyncio.Semaphore(prefetch)
            # The consumer counts from now, as RabbitMQ's does once consume returns,
            # and stops counting however its pump ends (even cancelled before it ran).
            self._queue(name)
            self._consumers[name] = self._consumers.get(name, 0) + 1
            pump = asyncio.create_task(self._pump(name, window, handler, subscription))
            pump.add_done_callback(functools.partial(self._consumer_gone, name))
            subscription.tasks.append(pump)
        return subscription

    def _consumer_gone(self, name: str, _: asyncio.Task[None]) -> None:
        self._consumers[name] -= 1

    async def _pump(
        self,
        name: str,
        window: asyncio.Semaphore,
        handler: DeliveryHandler,
        subscription: MemorySubscription,
    ) -> None:
        queue = self._queue(name)
        while True:
            await window.acquire()
            async with queue.ready:
                while not queue.messages:
                    try:
                        await queue.ready.wait()
                    except asyncio.CancelledError:
                        window.release()
                        raise
                body, redelivered = queue.messages.popleft()
            delivery = MemoryDelivery(self, name, body, redelivered, window)
            subscription.unsettled.add(delivery)
            task = asyncio.create_task(self._handle(handler, delivery, subscription))
            subscription.handlers.add(task)
            task.add_done_callback(subscription.handlers.discard)

    async def _handle(
        self,
        handler: DeliveryHandler,
        delivery: MemoryDelivery,
        subscription: MemorySubscription,
    ) -> None:
        try:
            await handler(delivery)
        finally:
            if delivery._settled:
                subscription.unsettled.discard(delivery)

    async def publish_notice(self, body: bytes) -> None:
        await self.ping()
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener.handler, body)  # after the caller's turn, as a network would

    async def listen_notices(
        self, handler: NoticeHandler, on_resumed: Callable[[], None]
    ) -> Subscription:
        listener = MemoryNotices(self, handler)
        self._listeners.add(listener)
        return listener

    async def inspect_queue(self, krolik_queue: str) -> QueueInfo | None:
        if krolik_queue not in self._queues:
            return None
        return QueueInfo(
            messages=self.depth(krolik_queue), consumers=self._consumers.get(krolik_queue, 0)
        )

    async def dead_lettered(self, limit: int = 100) -> list[tuple[bytes, dict[str, Any]]]:
        return self.dead[:limit]
