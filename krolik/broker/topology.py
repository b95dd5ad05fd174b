"""RabbitMQ topology as data: which exchange, queue and routing key serve a Krolik queue.

The default Krolik queue keeps the seed's names (``task_queue`` bound to
``task_exchange`` by ``task.new``); any other queue ``q`` becomes
``task_queue.q`` bound by ``task.new.q``. Every queue dead-letters into one
dead-letter queue, ``task_queue.dead``: what Krolik rejects, and (quorum queues)
a message delivered ``delivery_limit`` times, every worker that took it having died.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from krolik.settings import QueueType, RabbitMQSettings

DEAD_LETTER_SUFFIX = "dead"
REASON_HEADER = "x-krolik-reason"
MAX_REASON_LENGTH = 1000
"""Longer dead-letter reasons are cut: AMQP headers must stay small."""
ORIGIN_HEADER = "x-krolik-queue"
DELIVERY_LIMIT_ARGUMENT = "x-delivery-limit"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    routing_key: str
    queue_type: QueueType
    dead_letter_exchange: str
    dead_letter_routing_key: str
    delivery_limit: int | None = None

    @property
    def arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-queue-type": self.queue_type.value,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.dead_letter_routing_key,
        }
        if self.delivery_limit is not None and self.queue_type is QueueType.QUORUM:
            arguments[DELIVERY_LIMIT_ARGUMENT] = self.delivery_limit
        return arguments

    @property
    def arguments_without_limit(self) -> dict[str, Any]:
        """For a queue declared before Krolik set a delivery limit: RabbitMQ refuses to
        redeclare a queue with an argument it was not created with."""
        return {k: v for k, v in self.arguments.items() if k != DELIVERY_LIMIT_ARGUMENT}


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: str
    base_queue: str
    base_routing_key: str
    queue_type: QueueType
    default_queue: str
    delivery_limit: int | None = None

    @classmethod
    def from_settings(cls, settings: RabbitMQSettings, default_queue: str) -> Topology:
        return cls(
            exchange=settings.exchange_name,
            base_queue=settings.queue_name,
            base_routing_key=settings.routing_key,
            queue_type=settings.queue_type,
            default_queue=default_queue,
            delivery_limit=settings.delivery_limit,
        )

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.exchange}.{DEAD_LETTER_SUFFIX}"

    @property
    def notice_exchange(self) -> str:
        """The fanout exchange of change notices (``krolik/results/notices.py``)."""
        return f"{self.exchange}.notices"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.base_queue}.{DEAD_LETTER_SUFFIX}"

    def queue(self, krolik_queue: str) -> QueueSpec:
        """The RabbitMQ queue behind Krolik queue ``krolik_queue``."""
        if krolik_queue == self.default_queue:
            name, key = self.base_queue, self.base_routing_key
        else:
            name = f"{self.base_queue}.{krolik_queue}"
            key = f"{self.base_routing_key}.{krolik_queue}"
        return QueueSpec(
            name=name,
            routing_key=key,
            queue_type=self.queue_type,
            dead_letter_exchange=self.dead_letter_exchange,
            dead_letter_routing_key=self.dead_letter_queue,
            delivery_limit=self.delivery_limit,
        )
