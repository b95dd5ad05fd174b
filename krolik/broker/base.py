"""The broker seam: publish confirmed task messages, consume them, dead-letter the bad ones.

What a message says, and how, is ``wire.py``'s."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from krolik.broker.wire import TaskMessage
from krolik.errors import BrokerError, BrokerUnavailable


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What the broker confirmed of one ``publish``: per message, in the order given.

    One queue the broker refuses (deleted under the publisher, declared with other
    arguments, full) fails only its own messages; the others are confirmed or not on
    their own. ``unavailable`` says the connection failed midway: what is not confirmed
    may or may not have arrived (a second message is harmless, a lost one is not).
    """

    confirmed: tuple[bool, ...]
    queue_errors: dict[str, str] = field(default_factory=dict)
    unavailable: str | None = None

    @classmethod
    def all_confirmed(cls, count: int) -> PublishResult:
        return cls((True,) * count)

    @property
    def complete(self) -> bool:
        return all(self.confirmed)

    def raise_for_failures(self) -> None:
        """Raise unless every message was confirmed (for callers that want all or none)."""
        if self.unavailable is not None:
            raise BrokerUnavailable(f"publishing failed: {self.unavailable}")
        if not self.complete:
            errors = "; ".join(f"{queue}: {error}" for queue, error in self.queue_errors.items())
            raise BrokerError(f"RabbitMQ refused a message: {errors or 'not confirmed'}")


class Delivery(ABC):
    """One received message; exactly one of ack / requeue / dead_letter settles it."""

    body: bytes
    redelivered: bool

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def requeue(self) -> None:
        """Give the message back for another consumer."""

    @abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter queue with ``reason`` attached."""

    @abstractmethod
    async def dead_letter_part(self, message: TaskMessage, reason: str) -> None:
        """Dead-letter one task of a packed message; the message itself stays unsettled."""


DeliveryHandler = Callable[[Delivery], Awaitable[None]]
NoticeHandler = Callable[[bytes], None]


class Subscription(ABC):
    @abstractmethod
    async def cancel(self) -> None:
        """Stop receiving; unsettled deliveries go back to the queue."""


@dataclass(frozen=True, slots=True)
class QueueInfo:
    messages: int
    """Messages ready for delivery."""
    consumers: int


class Broker(ABC):
    @abstractmethod
    async def connect(self) -> None:
        """Connect and declare the topology; raise ``BrokerUnavailable`` if unreachable."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``BrokerUnavailable`` unless the broker is connected."""

    @abstractmethod
    async def publish(self, messages: Sequence[TaskMessage], per_message: int = 1) -> PublishResult:
        """Publish and wait for the broker's confirms; say which messages it confirmed.

        Up to ``per_message`` tasks of one queue may share one broker message. Raises
        ``BrokerUnavailable`` when not connected at all.
        """

    @abstractmethod
    async def consume(
        self, queues: Sequence[str], prefetch: int, handler: DeliveryHandler
    ) -> Subscription:
        """Hand each queue's messages to ``handler``, ``prefetch`` unsettled at most per queue."""

    @abstractmethod
    async def publish_notice(self, body: bytes) -> None:
        """Send a change notice to every process listening, best effort: not persisted,
        not confirmed. Raises ``BrokerUnavailable`` when not connected."""

    @abstractmethod
    async def listen_notices(
        self, handler: NoticeHandler, on_resumed: Callable[[], None]
    ) -> Subscription:
        """Hand every notice published from now on to ``handler``; ``on_resumed`` is
        called when the connection came back after a loss (notices of the gap are gone).
        Raises ``BrokerUnavailable`` when the broker cannot be reached."""

    @abstractmethod
    async def inspect_queue(self, krolik_queue: str) -> QueueInfo | None:
        """Depth and consumer count of a queue; None if the broker does not have it."""

    @abstractmethod
    async def dead_lettered(self, limit: int = 100) -> list[tuple[bytes, dict[str, Any]]]:
        """Peek at the dead-letter queue without removing anything (for operators and tests)."""
