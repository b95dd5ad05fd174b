"""The broker seam: publish confirmed task messages, consume them, dead-letter the bad ones."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from krolik.errors import KrolikError


class MalformedMessage(KrolikError):
    """The message is not a Krolik task message."""


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """'Task ``task_id`` is due': the whole message. The task itself lives in the store."""

    task_id: int
    name: str
    queue: str

    def encode(self) -> bytes:
        return orjson.dumps({"task_id": self.task_id, "name": self.name, "queue": self.queue})

    @classmethod
    def decode(cls, body: bytes) -> TaskMessage:
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedMessage("the body is not a JSON object")
        task_id, name, queue = data.get("task_id"), data.get("name"), data.get("queue")
        if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 < task_id < 2**63:
            raise MalformedMessage("task_id is missing or not a positive 64-bit integer")
        if not isinstance(name, str) or not name:
            raise MalformedMessage("name is missing or not a string")
        if not isinstance(queue, str) or not queue:
            raise MalformedMessage("queue is missing or not a string")
        return cls(task_id=task_id, name=name, queue=queue)


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


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


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
    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        """Publish and wait until the broker confirmed every message; raise otherwise."""

    @abstractmethod
    async def consume(
        self, queues: Sequence[str], prefetch: int, handler: DeliveryHandler
    ) -> Subscription:
        """Hand each queue's messages to ``handler``, ``prefetch`` unsettled at most per queue."""

    @abstractmethod
    async def inspect_queue(self, krolik_queue: str) -> QueueInfo | None:
        """Depth and consumer count of a queue; None if the broker does not have it."""

    @abstractmethod
    async def dead_lettered(self, limit: int = 100) -> list[tuple[bytes, dict[str, Any]]]:
        """Peek at the dead-letter queue without removing anything (for operators and tests)."""
