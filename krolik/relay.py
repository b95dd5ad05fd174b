"""The outbox relay: publishes due outbox rows with publisher confirms, then forgets them.

A row is deleted only after RabbitMQ confirmed its message, so a crash anywhere
leaves at worst a second message for the same task, which the worker's guarded
claim turns into a no-op. Rows are claimed for a while (SKIP LOCKED), so several
relays share the work without publishing a task twice in the normal case.

The API's own relay is also handed the rows its requests just wrote, claimed for
it in the same statement (``TaskStore.enqueue``): it publishes them straight
away, without a claim round trip, and polls for the rest every ``poll_seconds``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

from krolik.broker.base import Broker, PublishResult
from krolik.broker.wire import TaskMessage
from krolik.errors import BrokerError, BrokerUnavailable, StoreError
from krolik.events import Observer
from krolik.log import get_logger
from krolik.service import LoopService
from krolik.settings import RelaySettings
from krolik.store.base import TaskStore
from krolik.store.records import OutboxEntry

log = get_logger(__name__)

OUTAGE_BACKOFF = (0.25, 5.0)
"""While the broker is away: the first wait before trying again, and the longest."""
MAX_HANDED = 100_000
"""Rows handed over but not published yet (the broker is away) kept in memory; beyond
that they wait in the outbox, where any relay takes them when their claim runs out."""


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
        self._handed: list[OutboxEntry] = []
        self._next_poll = 0.0
        self._confirmed: list[int] = []
        """Outbox rows published and confirmed, not deleted yet."""
        self._ticking = False
        self.backoff = QueueBackoff()
        self._retry_at = 0.0
        self._outage_delay = OUTAGE_BACKOFF[0]

    @property
    def takes_handed_rows(self) -> bool:
        """Whether new rows should be handed over to this relay rather than left to its
        poll: only when it is idle and connected, so it publishes them at once. Under load
        its own claim gathers more rows per tick, which publishes them more cheaply; with
        the broker away, rows are better left to whichever relay gets there first."""
        return self.running and self._connected and not self._ticking and not self._handed

    def hand_over(self, entries: Iterable[OutboxEntry]) -> None:
        """Publish these rows, claimed for this relay by ``enqueue``, on the next tick."""
        room = MAX_HANDED - len(self._handed)
        self._handed.extend(itertools.islice(entries, max(room, 0)))
        self.wake()

    async def stop(self) -> None:
        await super().stop()
        # Whoever owns the broker may close it now: a later start() connects again.
        self._connected = False
        try:
            await self._forget_confirmed()
        except StoreError as exc:
            log.warning("relay_delete_failed", error=str(exc), count=len(self._confirmed))
        if self._handed:
            # Another relay may take them at once instead of when their claim runs out.
            handed, self._handed = self._handed, []
            try:
                await self.store.release_outbox([entry.id for entry in handed])
            except StoreError as exc:
                log.warning("relay_release_failed", error=str(exc), count=len(handed))

    async def _ensure_connected(self) -> bool:
        """Connected, or not yet time to try again: while the broker is away each try
        waits longer (``OUTAGE_BACKOFF``), and the outage is logged once, not per tick."""
        if self._connected:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            await self.broker.connect()
            await self.broker.ping()  # a connection object may exist while disconnected
        except BrokerUnavailable as exc:
            self._broker_away(str(exc))
            self.observer.outbox_publish_failed(0)
            return False
        self._connected = True
        self._outage_delay = OUTAGE_BACKOFF[0]
        log.info("relay_connected")
        return True

    def _broker_away(self, error: str) -> None:
        """Wait before the next try, longer after each failure, and log once per outage."""
        if self._outage_delay == OUTAGE_BACKOFF[0]:
            log.warning("relay_broker_unavailable", error=error)
        self._connected = False
        self._retry_at = time.monotonic() + self._outage_delay
        self._outage_delay = min(self._outage_delay * 2, OUTAGE_BACKOFF[1])

    async def tick(self) -> bool:
        self._ticking = True
        try:
            return await self._publish_due()
        finally:
            self._ticking = False

    async def _publish_due(self) -> bool:
        if not await self._ensure_connected():
            return False
        batch_size = self.settings.batch_size
        entries, self._handed = self._handed[:batch_size], self._handed[batch_size:]
        now = time.monotonic()
        if len(entries) < batch_size and (not entries or now >= self._next_poll):
            # Handed rows keep coming under load: poll for the others on schedule.
            self._next_poll = now + self.settings.poll_seconds
            try:
                entries += await self.store.claim_outbox(
                    batch_size - len(entries),
                    self.settings.claim_seconds,
                    skip_queues=self.backoff.waiting(),
                )
            except BaseException:
                self._handed[:0] = entries
                raise
        entries = await self._set_aside_waiting(entries)
        if not entries:
            return False
        messages = [TaskMessage(task_id=e.task_id, name=e.name, queue=e.queue) for e in entries]
        try:
            result = await self.broker.publish(messages, self.settings.tasks_per_message)
        except BrokerError as exc:
            log.warning("relay_publish_failed", error=str(exc), count=len(entries))
            self.observer.outbox_publish_failed(len(entries))
            if isinstance(exc, BrokerUnavailable):
                self._broker_away(str(exc))
            await self.store.release_outbox([entry.id for entry in entries])
            return False
        published = [e for e, ok in zip(entries, result.confirmed, strict=True) if ok]
        failed = [e for e, ok in zip(entries, result.confirmed, strict=True) if not ok]
        # What RabbitMQ confirmed is forgotten whatever else failed: published again it
        # would be a duplicate for every tick the failing part keeps failing.
        self._confirmed += [entry.id for entry in published]
        if failed or not self._handed or len(self._confirmed) >= batch_size:
            # More was handed over meanwhile (load): the rows of several ticks go in one
            # statement. Otherwise they go now.
            await self._forget_confirmed()
        if failed:
            self._note_failures(result, failed)
            await self.store.release_outbox([entry.id for entry in failed])
        for entry in published:
            self.backoff.succeeded(entry.queue)
        self.published += len(published)
        if published:
            self.observer.outbox_published(len(published))
            log.debug("relay_published", count=len(published))
        return len(entries) >= batch_size or bool(self._handed)

    def _note_failures(self, result: PublishResult, failed: list[OutboxEntry]) -> None:
        if result.unavailable is not None:
            log.warning("relay_publish_failed", error=result.unavailable, count=len(failed))
            self.observer.outbox_publish_failed(len(failed))
            self._broker_away(result.unavailable)
        for queue, error in result.queue_errors.items():
            count = sum(1 for entry in failed if entry.queue == queue)
            delay = self.backoff.failed(queue)
            log.warning(
                "relay_queue_failing",
                queue=queue,
                error=error,
                count=count,
                retry_in_seconds=round(delay, 2),
            )
            self.observer.queue_publish_failed(queue)

    async def _set_aside_waiting(self, entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """Rows (handed over) of queues that back off go back to the outbox to wait."""
        waiting = set(self.backoff.waiting())
        if not waiting:
            return entries
        aside = [entry.id for entry in entries if entry.queue in waiting]
        if aside:
            await self.store.release_outbox(aside)
        return [entry for entry in entries if entry.queue not in waiting]

    async def _forget_confirmed(self) -> None:
        """Delete the rows whose messages RabbitMQ confirmed. Were this lost, their claim
        would run out and they would be published again: a duplicate, not a loss."""
        ids, self._confirmed = self._confirmed, []
        try:
            await self.store.delete_outbox(ids)
        except BaseException:
            self._confirmed[:0] = ids
            raise


class QueueBackoff:
    """Queues RabbitMQ refuses (deleted, declared with other arguments, full) wait on
    their own, each longer after every failure, while the other queues flow on."""

    FIRST_SECONDS = 0.5
    MOST_SECONDS = 30.0

    def __init__(self) -> None:
        self._delays: dict[str, float] = {}
        self._until: dict[str, float] = {}

    def failed(self, queue: str) -> float:
        """Note a failure; the delay before this queue is tried again."""
        delay = min(self._delays.get(queue, self.FIRST_SECONDS / 2) * 2, self.MOST_SECONDS)
        self._delays[queue] = delay
        self._until[queue] = time.monotonic() + delay
        return delay

    def succeeded(self, queue: str) -> None:
        if self._delays.pop(queue, None) is not None:
            self._until.pop(queue, None)
            log.info("relay_queue_recovered", queue=queue)

    def waiting(self) -> list[str]:
        """Queues not to be tried yet."""
        now = time.monotonic()
        return sorted(queue for queue, until in self._until.items() if until > now)


def handing_over(relay: OutboxRelay | None) -> float | None:
    """``claim_outbox_seconds`` for an ``enqueue`` by the process of ``relay``: its claim
    when the relay takes handed rows now, else None (the rows wait for a poll)."""
    if relay is None or not relay.takes_handed_rows:
        return None
    return relay.settings.claim_seconds
