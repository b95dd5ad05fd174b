"""The broker seam: publish confirmed task messages, consume them, dead-letter the bad ones."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from krolik.errors import BrokerError, BrokerUnavailable, KrolikError


class MalformedMessage(KrolikError):
    """The message is not a Krolik task message."""


MAX_TASKS_PER_MESSAGE = 10_000
"""A message naming more tasks than this is refused as malformed."""


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """'Task ``task_id`` is due': all a message says. The task itself lives in the store.

    On the wire one message names one task (``{"task_id", "name", "queue"}``) or several
    due tasks of one queue (``{"queue", "tasks": [[task_id, name], ...]}``): under load
    the relay packs what it publishes, so a worker receives, claims and acks many tasks
    per message.
    """

    task_id: int
    name: str
    queue: str

    def encode(self) -> bytes:
        return orjson.dumps({"task_id": self.task_id, "name": self.name, "queue": self.queue})

    @classmethod
    def decode(cls, body: bytes) -> TaskMessage:
        """The one task of a single-task message."""
        messages = cls.decode_many(body)
        if len(messages) != 1:
            raise MalformedMessage("the message names more than one task")
        return messages[0]

    @classmethod
    def decode_many(cls, body: bytes) -> list[TaskMessage]:
        """Every task a message names, in its order."""
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedMessage("the body is not a JSON object")
        queue = data.get("queue")
        if not isinstance(queue, str) or not queue:
            raise MalformedMessage("queue is missing or not a string")
        if "tasks" not in data:
            return [cls(_task_id(data.get("task_id")), _name(data.get("name")), queue)]
        tasks = data["tasks"]
        if not isinstance(tasks, list) or not 0 < len(tasks) <= MAX_TASKS_PER_MESSAGE:
            raise MalformedMessage(
                f"tasks is not a list of 1 to {MAX_TASKS_PER_MESSAGE} [task_id, name] pairs"
            )
        messages = []
        for item in tasks:
            if not isinstance(item, list) or len(item) != 2:
                raise MalformedMessage("an item of tasks is not a [task_id, name] pair")
            messages.append(cls(_task_id(item[0]), _name(item[1]), queue))
        return messages


def _task_id(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise MalformedMessage("task_id is missing or not a positive 64-bit integer")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedMessage("name is missing or not a string")
    return value


def encode_messages(messages: Sequence[TaskMessage]) -> bytes:
    """One body for tasks of one queue: the single-task form for one, else the packed form."""
    if len(messages) == 1:
        return messages[0].encode()
    return orjson.dumps(
        {"queue": messages[0].queue, "tasks": [[m.task_id, m.name] for m in messages]}
    )


def pack(messages: Sequence[TaskMessage], per_message: int) -> list[list[TaskMessage]]:
    """Group tasks by queue, at most ``per_message`` to a group, keeping their order."""
    return [[messages[i] for i in group] for group in pack_indexes(messages, per_message)]


def pack_indexes(messages: Sequence[TaskMessage], per_message: int) -> list[list[int]]:
    """``pack``, as the positions of the messages in each group."""
    by_queue: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        by_queue.setdefault(message.queue, []).append(index)
    step = max(1, per_message)
    return [
        group[start : start + step]
        for group in by_queue.values()
        for start in range(0, len(group), step)
    ]


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
    async def inspect_queue(self, krolik_queue: str) -> QueueInfo | None:
        """Depth and consumer count of a queue; None if the broker does not have it."""

    @abstractmethod
    async def dead_lettered(self, limit: int = 100) -> list[tuple[bytes, dict[str, Any]]]:
        """Peek at the dead-letter queue without removing anything (for operators and tests)."""
