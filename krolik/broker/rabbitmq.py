"""The RabbitMQ broker: durable queues, persistent messages, publisher confirms.

Publishing and consuming use separate connections, so a consumer's flow control
never stalls the relay. Both are robust connections to a cluster's nodes
(``nodes.py``): they come back by themselves after RabbitMQ restarts, on another
node when theirs died or froze, and consumers are restored with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from krolik.broker.base import (
    Broker,
    Delivery,
    DeliveryHandler,
    NoticeHandler,
    PublishResult,
    QueueInfo,
    Subscription,
)
from krolik.broker.nodes import NodeRing, connect_cluster
from krolik.broker.topology import (
    DELIVERY_LIMIT_ARGUMENT,
    MAX_REASON_LENGTH,
    ORIGIN_HEADER,
    REASON_HEADER,
    Topology,
)
from krolik.broker.wire import TaskMessage, encode_messages, pack_indexes
from krolik.errors import BrokerUnavailable
from krolik.log import get_logger
from krolik.settings import RabbitMQSettings

log = get_logger(__name__)

_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ConnectionClosed,
    aio_pika.exceptions.ChannelClosed,
    RuntimeError,  # aio-pika raises it for a connection closed under a waiting call
)
_QUEUE_REFUSALS = (
    aiormq.exceptions.ChannelPreconditionFailed,  # declared before with other arguments
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelLockedResource,  # an exclusive queue of another connection
    aiormq.exceptions.ChannelNotFoundEntity,
)
"""Channel closes that are about one queue, not about the connection."""

STALLED_PUBLISHES = 3
"""Publishes in a row that time out on a connection that says it is up: then it is
replaced by a new one, on the next node (seen: a connection restored onto a node while
another node froze kept timing out every channel it opened, for minutes)."""


def _cancelled_by_caller() -> bool:
    """Whether a CancelledError here was asked for (a shutdown, a timeout of ours).

    aiormq also ends the pending calls of a connection that closed (its node died or
    froze) with CancelledError, in a task nobody cancelled: that is the broker going
    away, and must not end the relay's or a worker's loop."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


@contextlib.contextmanager
def _connection_loss_is_unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except asyncio.CancelledError:
        if _cancelled_by_caller():
            raise
        raise BrokerUnavailable(f"{what}: the connection closed under it") from None


class RabbitDelivery(Delivery):
    def __init__(
        self, message: AbstractIncomingMessage, broker: RabbitMQBroker, krolik_queue: str
    ) -> None:
        self._message = message
        self._broker = broker
        self._krolik_queue = krolik_queue
        self.body = message.body
        self.redelivered = bool(message.redelivered)

    async def ack(self) -> None:
        with _connection_loss_is_unavailable("ack"):
            await self._message.ack()

    async def requeue(self) -> None:
        with _connection_loss_is_unavailable("requeue"):
            await self._message.nack(requeue=True)

    async def dead_letter(self, reason: str) -> None:
        try:
            await self._broker.publish_dead_letter(self.body, reason, origin=self._krolik_queue)
        except Exception:
            # RabbitMQ's own dead-lettering still keeps the message, without the reason.
            log.warning("dead_letter_publish_failed", reason=reason, exc_info=True)
            with _connection_loss_is_unavailable("reject"):
                await self._message.reject(requeue=False)
            return
        with _connection_loss_is_unavailable("ack"):
            await self._message.ack()

    async def dead_letter_part(self, message: TaskMessage, reason: str) -> None:
        await self._broker.publish_dead_letter(message.encode(), reason, origin=self._krolik_queue)


class RabbitSubscription(Subscription):
    def __init__(self, channel: AbstractChannel, consumers: list[tuple[AbstractQueue, str]]):
        self._channel = channel
        self._consumers = consumers

    async def cancel(self) -> None:
        # On a closed channel (broker closed, or RabbitMQ away) cancelling a consumer
        # would wait for a reconnection; closing the channel alone ends the consumers
        # and keeps the robust connection from restoring them.
        if not self._channel.is_closed:
            for queue, tag in self._consumers:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await queue.cancel(tag)
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await self._channel.close()


NOTICE_QUEUE_LENGTH = 10_000
"""Notices a listener's queue holds at most; older ones are dropped first (a listener
that far behind re-reads what it watches anyway)."""


class RabbitNotices(Subscription):
    """A listener's own connection, exclusive queue and consumer: closing one ends all."""

    def __init__(
        self, connection: AbstractRobustConnection, listening: set[AbstractRobustConnection]
    ) -> None:
        self._connection = connection
        self._listening = listening

    async def cancel(self) -> None:
        self._listening.discard(self._connection)
        await _close_quietly(self._connection)


class RabbitMQBroker(Broker):
    def __init__(self, settings: RabbitMQSettings, topology: Topology) -> None:
        self.settings = settings
        self.topology = topology
        self._publisher: AbstractRobustConnection | None = None
        self._consumer: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._dead_exchange: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._limit_checked: set[str] = set()
        self._without_limit: set[str] = set()
        """Queues created before Krolik set a delivery limit: declared without one."""
        self.queue_names: set[str] = {topology.dead_letter_queue}
        """Every RabbitMQ queue this broker declared (tests delete them afterwards)."""
        self._declare_lock = asyncio.Lock()
        self._ring = NodeRing(
            settings.node_urls, shuffle=settings.shuffle_nodes, heartbeat=settings.heartbeat_seconds
        )
        self._stalled_publishes = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._notices_out: (
            tuple[AbstractRobustConnection, AbstractChannel, AbstractExchange] | None
        ) = None
        self._listening: set[AbstractRobustConnection] = set()

    async def _connect(self) -> AbstractRobustConnection:
        try:
            return await connect_cluster(
                self._ring, timeout=self.settings.publish_timeout_seconds, connection_name="krolik"
            )
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"RabbitMQ cannot be reached: {type(exc).__name__}") from None

    async def connect(self) -> None:
        if self._publisher is not None:
            return
        connection = await self._connect()
        try:
            channel = await self._declare_topology(connection)
        except BaseException as exc:
            self._exchange = self._dead_exchange = None
            await _close_quietly(connection)
            if isinstance(exc, _CONNECTION_ERRORS):
                # The broker went away between the connection and its declarations.
                raise BrokerUnavailable(f"RabbitMQ went away: {type(exc).__name__}") from None
            raise
        self._publisher, self._channel = connection, channel

    async def _declare_topology(self, connection: AbstractRobustConnection) -> AbstractChannel:
        """The publishing channel, with the exchanges and the dead-letter queue declared."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await channel.declare_exchange(
            self.topology.exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        self._dead_exchange = await channel.declare_exchange(
            self.topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead_queue = await channel.declare_queue(
            self.topology.dead_letter_queue,
            durable=True,
            arguments={"x-queue-type": self.topology.queue_type.value},
        )
        await dead_queue.bind(self._dead_exchange, routing_key=self.topology.dead_letter_queue)
        return channel

    async def close(self) -> None:
        for listener in list(self._listening):
            await _close_quietly(listener)
        self._listening.clear()
        self._notices_out = None
        for connection in (self._consumer, self._publisher):
            if connection is not None:
                await connection.close()
        self._publisher = self._consumer = self._channel = None
        self._exchange = self._dead_exchange = None
        self._declared.clear()
        if self._closing:  # stalled connections being closed (bounded)
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def ping(self) -> None:
        connection = self._publisher
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise BrokerUnavailable("RabbitMQ is not connected")

    async def declare_queue(self, channel: AbstractChannel, krolik_queue: str) -> AbstractQueue:
        spec = self.topology.queue(krolik_queue)
        self.queue_names.add(spec.name)
        arguments = (
            spec.arguments_without_limit if spec.name in self._without_limit else spec.arguments
        )
        queue = await channel.declare_queue(spec.name, durable=True, arguments=arguments)
        await queue.bind(self.topology.exchange, routing_key=spec.routing_key)
        return queue

    async def _check_delivery_limit(
        self, connection: AbstractRobustConnection, krolik_queue: str
    ) -> None:
        """Learn, on a channel of its own, whether the queue exists without the delivery
        limit (created by an earlier version): then it is declared as it is, with a
        warning, rather than refused."""
        spec = self.topology.queue(krolik_queue)
        if DELIVERY_LIMIT_ARGUMENT not in spec.arguments or spec.name in self._limit_checked:
            return
        channel = await connection.channel()
        try:
            await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            if DELIVERY_LIMIT_ARGUMENT not in str(exc):
                raise
            self._without_limit.add(spec.name)
            log.warning(
                "rabbitmq_queue_without_delivery_limit",
                queue=spec.name,
                hint="set a 'delivery-limit' policy on it, or delete it to have it "
                "declared again with the limit",
            )
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await channel.close()
        self._limit_checked.add(spec.name)

    async def _ensure_declared(self, krolik_queue: str) -> str | None:
        """Declare the queue once per connection; what RabbitMQ said if it refused.

        On a channel of its own: RabbitMQ closes the channel of a refused declaration
        (a queue declared before with other arguments, a name it will not take), and the
        publishing channel, with every other queue's confirms on it, must not go with it.
        """
        if krolik_queue in self._declared:
            return None
        async with self._declare_lock:
            if krolik_queue in self._declared or self._publisher is None:
                return None
            try:
                await self._check_delivery_limit(self._publisher, krolik_queue)
            except _QUEUE_REFUSALS as exc:
                return f"{type(exc).__name__}: {exc}"
            channel = await self._publisher.channel()
            try:
                await self.declare_queue(channel, krolik_queue)
            except _QUEUE_REFUSALS as exc:
                return f"{type(exc).__name__}: {exc}"
            finally:
                if not channel.is_closed:
                    with contextlib.suppress(*_CONNECTION_ERRORS):
                        await channel.close()
            self._declared.add(krolik_queue)
        return None

    async def publish(self, messages: Sequence[TaskMessage], per_message: int = 1) -> PublishResult:
        exchange, channel = self._exchange, self._channel
        if exchange is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout_seconds
        groups = pack_indexes(messages, per_message)
        queue_errors: dict[str, str] = {}
        try:
            # The declarations too are under the timeout: while RabbitMQ is away, the
            # robust channel waits for it to come back, and so would an unbounded call.
            async with asyncio.timeout_at(deadline):
                for krolik_queue in dict.fromkeys(messages[group[0]].queue for group in groups):
                    refused = await self._ensure_declared(krolik_queue)
                    if refused is not None:
                        queue_errors[krolik_queue] = refused
        except (*_CONNECTION_ERRORS, TimeoutError) as exc:
            self._declared.clear()
            if isinstance(exc, TimeoutError):
                await self._note_stall()
            raise BrokerUnavailable(f"publishing failed: {type(exc).__name__}") from None
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
            self._declared.clear()
            raise BrokerUnavailable("publishing failed: the connection closed") from None
        sending = [group for group in groups if messages[group[0]].queue not in queue_errors]
        # All publishes in flight at once; each awaits its own confirm.
        flights = [
            asyncio.ensure_future(self._publish_group(exchange, [messages[i] for i in group]))
            for group in sending
        ]
        if flights:
            await asyncio.wait(flights, timeout=max(deadline - loop.time(), 0))
        confirmed = [False] * len(messages)
        unavailable: str | None = None
        nacked = False
        for group, flight in zip(sending, flights, strict=True):
            krolik_queue = messages[group[0]].queue
            if not flight.done():
                flight.cancel()
                unavailable = "TimeoutError"
                continue
            if flight.cancelled():  # by aiormq: the connection closed under it
                unavailable = "ConnectionClosed"
                continue
            error = flight.exception()
            if error is None:
                for index in group:
                    confirmed[index] = True
            elif isinstance(error, aio_pika.exceptions.DeliveryError):
                # Returned unroutable (the queue was deleted) or nacked (full, or its
                # leader just moved): declare it again next time; only this queue waits.
                queue_errors[krolik_queue] = f"{type(error).__name__}: {error}"
                self._declared.discard(krolik_queue)
                nacked = nacked or not isinstance(error, aiormq.exceptions.PublishError)
            else:
                unavailable = type(error).__name__
        if nacked:
            await self._renew_channel(channel)
        if unavailable == "TimeoutError":
            await self._note_stall()
        elif unavailable is None:
            self._stalled_publishes = 0
        if unavailable is not None:
            self._declared.clear()
            if not any(confirmed) and not queue_errors:
                raise BrokerUnavailable(f"publishing failed: {unavailable}")
        return PublishResult(tuple(confirmed), queue_errors, unavailable)

    async def _note_stall(self) -> None:
        """Count a timed-out publish; replace a connection that stalls while it says it is
        up (a dead one the robust connection replaces by itself)."""
        connection = self._publisher
        if connection is None or not connection.connected.is_set():
            self._stalled_publishes = 0
            return
        self._stalled_publishes += 1
        if self._stalled_publishes < STALLED_PUBLISHES:
            return
        self._stalled_publishes = 0
        self._publisher = self._channel = None
        self._exchange = self._dead_exchange = None
        self._declared.clear()
        self._limit_checked.clear()
        stalled_on = getattr(connection, "node", "?")
        self._ring.advance()
        log.warning("rabbitmq_publisher_stalled", node=stalled_on, action="reconnecting")
        # Closing may wait on the stalled node: in the background, bounded.
        task = asyncio.create_task(_close_within(connection, self.settings.publish_timeout_seconds))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _renew_channel(self, stale: AbstractChannel | None) -> None:
        """A new publishing channel after a nack. RabbitMQ 3.10 was seen nacking every
        publish of a channel opened just as a quorum queue's leader died, for the
        channel's whole life; a new channel publishes normally."""
        async with self._declare_lock:
            if self._publisher is None or stale is None or self._channel is not stale:
                return  # closed, or renewed by another publish meanwhile
            try:
                with _connection_loss_is_unavailable("renewing the channel"):
                    self._channel = await self._declare_topology(self._publisher)
            except (*_CONNECTION_ERRORS, BrokerUnavailable):
                return  # RabbitMQ away: the robust connection restores the old channel
            log.info("rabbitmq_publish_channel_renewed")
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await stale.close()

    async def _publish_group(
        self, exchange: AbstractExchange, group: Sequence[TaskMessage]
    ) -> None:
        await exchange.publish(
            aio_pika.Message(
                encode_messages(group),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                # Always set: without one aiormq draws a uuid from `random`.
                message_id=_message_id(group),
                type=group[0].name if len(group) == 1 else None,
            ),
            routing_key=self.topology.queue(group[0].queue).routing_key,
            mandatory=True,
        )

    async def publish_dead_letter(self, body: bytes, reason: str, origin: str) -> None:
        if self._dead_exchange is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        with _connection_loss_is_unavailable("dead-lettering"):
            await self._publish_dead_letter(self._dead_exchange, body, reason, origin)

    async def _publish_dead_letter(
        self, exchange: AbstractExchange, body: bytes, reason: str, origin: str
    ) -> None:
        await exchange.publish(
            aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={REASON_HEADER: reason[:MAX_REASON_LENGTH], ORIGIN_HEADER: origin},
            ),
            routing_key=self.topology.dead_letter_queue,
            mandatory=True,
            timeout=self.settings.publish_timeout_seconds,
        )

    async def consume(
        self, queues: Sequence[str], prefetch: int, handler: DeliveryHandler
    ) -> Subscription:
        try:
            with _connection_loss_is_unavailable("subscribing"):
                return await self._subscribe(queues, prefetch, handler)
        except (*_CONNECTION_ERRORS, BrokerUnavailable) as exc:
            consumer, self._consumer = self._consumer, None  # the next try connects afresh
            if consumer is not None:
                await _close_quietly(consumer)
            if isinstance(exc, BrokerUnavailable):
                raise
            raise BrokerUnavailable(f"RabbitMQ went away: {type(exc).__name__}") from None

    async def _subscribe(
        self, queues: Sequence[str], prefetch: int, handler: DeliveryHandler
    ) -> Subscription:
        if self._consumer is None:
            self._consumer = await self._connect()
        for krolik_queue in queues:
            await self._check_delivery_limit(self._consumer, krolik_queue)
        channel = await self._consumer.channel()
        await channel.set_qos(prefetch_count=prefetch)

        def receiver(krolik_queue: str) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
            async def on_message(message: AbstractIncomingMessage) -> None:
                await handler(RabbitDelivery(message, self, krolik_queue))

            return on_message

        consumers = []
        for krolik_queue in queues:
            queue = await self.declare_queue(channel, krolik_queue)
            tag = await queue.consume(receiver(krolik_queue), no_ack=False)
            consumers.append((queue, tag))
        return RabbitSubscription(channel, consumers)

    # -- change notices --------------------------------------------------------------
    async def publish_notice(self, body: bytes) -> None:
        try:
            async with asyncio.timeout(self.settings.publish_timeout_seconds):
                exchange = await self._notice_exchange()
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                    routing_key="",
                )
        except (*_CONNECTION_ERRORS, TimeoutError) as exc:
            self._notices_out = None
            raise BrokerUnavailable(f"the notice was not sent: {type(exc).__name__}") from None

    async def _notice_exchange(self) -> AbstractExchange:
        """The notice exchange on a channel (without confirms) of the current publishing
        connection, opened again when that connection was replaced."""
        connection = self._publisher
        if connection is None or not connection.connected.is_set():
            raise BrokerUnavailable("RabbitMQ is not connected")
        held = self._notices_out
        if held is not None and held[0] is connection and not held[1].is_closed:
            return held[2]
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(
            self.topology.notice_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        self._notices_out = (connection, channel, exchange)
        return exchange

    async def listen_notices(
        self, handler: NoticeHandler, on_resumed: Callable[[], None]
    ) -> Subscription:
        """On a connection of its own (a publisher replaced after a stall does not take
        the listener with it), an exclusive queue bound to the notice exchange: the
        robust connection declares, binds and consumes it again after a reconnect."""
        connection = await self._connect()
        try:
            with _connection_loss_is_unavailable("listening for notices"):
                channel = await connection.channel()
                exchange = await channel.declare_exchange(
                    self.topology.notice_exchange, aio_pika.ExchangeType.FANOUT, durable=True
                )
                queue = await channel.declare_queue(
                    f"{self.topology.notice_exchange}.{uuid.uuid4().hex}",
                    durable=False,
                    exclusive=True,
                    auto_delete=True,
                    arguments={
                        "x-queue-type": "classic",
                        "x-max-length": NOTICE_QUEUE_LENGTH,
                        "x-overflow": "drop-head",
                    },
                )
                await queue.bind(exchange)

                async def on_message(message: AbstractIncomingMessage) -> None:
                    handler(message.body)

                await queue.consume(on_message, no_ack=True)
        except BaseException as exc:  # cancelled too: the connection must not live on
            await _close_quietly(connection)
            if isinstance(exc, _CONNECTION_ERRORS):
                raise BrokerUnavailable(f"RabbitMQ went away: {type(exc).__name__}") from None
            raise
        connection.reconnect_callbacks.add(lambda *_: on_resumed())
        self._listening.add(connection)
        return RabbitNotices(connection, self._listening)

    async def inspect_queue(self, krolik_queue: str) -> QueueInfo | None:
        if self._publisher is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        name = self.topology.queue(krolik_queue).name
        channel = await self._publisher.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return None  # RabbitMQ closes the channel for a queue it does not have
        finally:
            if not channel.is_closed:
                await channel.close()
        result = declared.declaration_result
        return QueueInfo(messages=result.message_count or 0, consumers=result.consumer_count or 0)

    async def dead_lettered(self, limit: int = 100) -> list[tuple[bytes, dict[str, Any]]]:
        if self._publisher is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        channel = await self._publisher.channel()
        try:
            queue = await channel.get_queue(self.topology.dead_letter_queue, ensure=True)
            seen: list[AbstractIncomingMessage] = []
            while len(seen) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                seen.append(message)
            found = [(m.body, dict(m.headers or {})) for m in seen]
            for message in seen:
                await message.nack(requeue=True)
            return found
        finally:
            await channel.close()


async def _close_within(connection: AbstractRobustConnection, seconds: float) -> None:
    with contextlib.suppress(Exception, TimeoutError):
        async with asyncio.timeout(seconds):
            await connection.close()


async def _close_quietly(connection: AbstractRobustConnection) -> None:
    with contextlib.suppress(*_CONNECTION_ERRORS):
        await connection.close()


def _message_id(group: Sequence[TaskMessage]) -> str:
    """The task id, or the first and last task ids of a packed message."""
    first, last = group[0].task_id, group[-1].task_id
    return str(first) if len(group) == 1 else f"{first}..{last}"
