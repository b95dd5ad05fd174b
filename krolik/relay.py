"""The outbox relay: publishes due outbox rows with publisher confirms, then forgets them.

A row is deleted only after RabbitMQ confirmed its message, so a crash anywhere
leaves at worst a second message for the same task, which the worker's guarded
claim turns into a no-op. Rows are claimed for a while (SKIP LOCKED), so several
relays share the work without publishing a task twice in the normal case.
"""

from __future__ import annotations

from krolik.broker.base import Broker, TaskMessage
from krolik.errors import BrokerError, BrokerUnavailable
from krolik.events import Observer
from krolik.log import get_logger
from krolik.service import LoopService
from krolik.settings import RelaySettings
from krolik.store.base import TaskStore

log = get_logger(__name__)


class OutboxRelay(LoopService):
    name = "relay"

    def __init__(
        self,
        store: TaskStore,
        broker: Broker,
        settings: RelaySettings,
        observer: Observer | None = None,
    ) -> None:
        super().__init__(settings.poll_seconds)
        self.observer = observer or Observer()
        self.store = store
        self.broker = broker
        self.settings = settings
        self.published = 0
        self._connected = False

    async def stop(self) -> None:
        await super().stop()
        # Whoever owns the broker may close it now: a later start() connects again.
        self._connected = False

    async def _ensure_connected(self) -> bool:
        if self._connected:
            return True
        try:
            await self.broker.connect()
        except BrokerUnavailable as exc:
            log.warning("relay_broker_unavailable", error=str(exc))
            self.observer.outbox_publish_failed(0)
            return False
        self._connected = True
        log.info("relay_connected")
        return True

    async def tick(self) -> bool:
        if not await self._ensure_connected():
            return False
        entries = await self.store.claim_outbox(
            self.settings.batch_size, self.settings.claim_seconds
        )
        if not entries:
            return False
        messages = [TaskMessage(task_id=e.task_id, name=e.name, queue=e.queue) for e in entries]
        ids = [entry.id for entry in entries]
        try:
            await self.broker.publish(messages, self.settings.tasks_per_message)
        except BrokerError as exc:
            log.warning("relay_publish_failed", error=str(exc), count=len(entries))
            self.observer.outbox_publish_failed(len(entries))
            await self.store.release_outbox(ids)
            return False
        await self.store.delete_outbox(ids)
        self.published += len(entries)
        self.observer.outbox_published(len(entries))
        log.debug("relay_published", count=len(entries))
        return len(entries) >= self.settings.batch_size
