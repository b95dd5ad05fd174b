"""The wire format of Krolik's messages: what one says ("these tasks are due"), and how.

On the wire one message names one task (``{"task_id", "name", "queue"}``, the seed's
shape) or several due tasks of one queue (``{"queue", "tasks": [[task_id, name], ...]}``):
under load the relay packs what it publishes, so a worker receives, claims and acks many
tasks per message. The task itself lives in the store; a message only points at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from krolik.errors import KrolikError


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
