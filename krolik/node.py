"""One Krolik process, built in one place: from the settings, a mode and the roles it plays.

The mode picks the store and broker (production: PostgreSQL and RabbitMQ; embedded, for
``krolik dev``: SQLite and the in-process broker). The roles pick the services:

* ``api``: what the HTTP API needs (the submission path, API keys, rate limits, the
  store's gauges), with the outbox relay inside unless ``APP__RELAY__ENABLED=false``;
* ``worker``: a worker, the lease rescuer, the cleaner (retention) and the waker
  (held tasks of gated queues);
* ``relay``: an outbox relay of its own;
* ``scheduler``: a scheduler of its own (a worker runs one too, unless
  ``APP__SCHEDULER__ENABLED=false``).

Wherever a relay runs, the webhook sender runs beside it: both send on what the
database holds (the outbox, the deliveries) and scale the same way.

``start`` and ``stop`` bring them up and down in order: the store, then the broker's
users, then the loops; the reverse on the way down. Every process (``krolik api``,
``worker``, ``relay``, ``dev``) and every test app is a node; nothing else builds a
store, a broker or a service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from krolik.broker.base import Broker
from krolik.errors import BrokerUnavailable, StoreUnavailable
from krolik.events import Observers
from krolik.log import get_logger
from krolik.metrics import Metrics
from krolik.registry import Registry
from krolik.relay import OutboxRelay
from krolik.results.notices import ChangeNotices
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.tracing import build_tracing

if TYPE_CHECKING:
    from krolik.access import KeyCache
    from krolik.maintenance import LeaseRescuer
    from krolik.metrics import StoreGauges
    from krolik.rate_limit import RateLimiter
    from krolik.results.watch import TaskWatch
    from krolik.retention import Cleaner
    from krolik.schedules.scheduler import Scheduler
    from krolik.store.replica import ReplicaReads, StatusReads
    from krolik.submit import Submitter
    from krolik.tracing.spans import TaskSpans
    from krolik.waker import Waker
    from krolik.webhooks.sender import WebhookSender
    from krolik.worker import Worker

log = get_logger(__name__)

RETRY_SECONDS = 2.0
"""How often a worker or relay process tries again to reach a service it waits for."""


class Mode(StrEnum):
    PRODUCTION = "production"
    EMBEDDED = "embedded"


class Role(StrEnum):
    API = "api"
    WORKER = "worker"
    RELAY = "relay"
    SCHEDULER = "scheduler"


# The implementations, and each role's services, are imported where they are built: a
# process loads the drivers of its mode and the libraries of its roles only (a worker
# starts without FastAPI, ``krolik dev`` without asyncpg and aio-pika).


def build_store(settings: Settings, mode: Mode = Mode.PRODUCTION) -> TaskStore:
    if mode is Mode.EMBEDDED:
        from krolik.store.sqlite import SqliteTaskStore

        return SqliteTaskStore(Path(settings.embedded.path).resolve())
    from krolik.store.postgres import PostgresTaskStore

    return PostgresTaskStore.from_settings(settings.db)


def build_broker(settings: Settings, mode: Mode = Mode.PRODUCTION) -> Broker:
    if mode is Mode.EMBEDDED:
        from krolik.broker.memory import MemoryBroker

        return MemoryBroker()
    from krolik.broker.rabbitmq import RabbitMQBroker
    from krolik.broker.topology import Topology

    return RabbitMQBroker(
        settings.rabbitmq, Topology.from_settings(settings.rabbitmq, settings.default_queue)
    )


def _build_replica(settings: Settings, mode: Mode, primary: TaskStore) -> ReplicaReads | None:
    """The read replica of ``APP__DB__READ_URL`` (production only), or None."""
    if mode is not Mode.PRODUCTION or settings.db.read_url is None:
        return None
    from krolik.store.postgres import PostgresTaskStore
    from krolik.store.replica import ReplicaReads

    on_replica = settings.db.model_copy(update={"url": settings.db.read_url, "read_url": None})
    return ReplicaReads(
        primary,
        PostgresTaskStore.from_settings(on_replica),
        max_lag_seconds=settings.db.read_max_lag_seconds,
        check_seconds=settings.db.read_check_seconds,
    )


@dataclass
class ApiServices:
    """What the HTTP API serves from, besides the store and the broker."""

    submitter: Submitter
    keys: KeyCache
    rate_limiter: RateLimiter
    gauges: StoreGauges
    reads: StatusReads
    """Where list and status reads go: the store, or a replica while it keeps up."""
    watch: TaskWatch
    """Wakes the requests that wait for tasks or follow them."""
    replica: ReplicaReads | None = None
    tracing: TaskSpans | None = None


@dataclass
class Node:
    settings: Settings
    mode: Mode
    store: TaskStore
    broker: Broker
    metrics: Metrics
    observer: Observers
    api: ApiServices | None = None
    relay: OutboxRelay | None = None
    worker: Worker | None = None
    rescuer: LeaseRescuer | None = None
    cleaner: Cleaner | None = None
    waker: Waker | None = None
    scheduler: Scheduler | None = None
    webhooks: WebhookSender | None = None
    owned: list[TaskStore | Broker] = field(default_factory=list)
    """What the node built itself and so closes; what it was given, its giver closes."""
    _started: bool = field(default=False, init=False, repr=False)
    _connector: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        roles: Collection[Role],
        *,
        mode: Mode = Mode.PRODUCTION,
        registry: Registry | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        store: TaskStore | None = None,
        broker: Broker | None = None,
        metrics: Metrics | None = None,
    ) -> Node:
        """The node of ``roles``; ``store``, ``broker`` and ``metrics`` replace the ones the
        mode would build (tests; a process sharing them between nodes)."""
        the_metrics = metrics or Metrics()
        the_store = store or build_store(settings, mode)
        the_broker = broker or build_broker(settings, mode)
        observer = Observers([the_metrics, ChangeNotices(the_broker)])
        tracing = build_tracing(settings.tracing)
        if tracing is not None:
            observer.add(tracing)
        node = cls(
            settings,
            mode,
            the_store,
            the_broker,
            the_metrics,
            observer,
            owned=[made for made, given in ((the_broker, broker), (the_store, store)) if not given],
        )
        if Role.RELAY in roles or (Role.API in roles and settings.relay.enabled):
            from krolik.webhooks.sender import WebhookSender

            node.relay = OutboxRelay(the_store, the_broker, settings.relay, observer)
            node.webhooks = WebhookSender(
                the_store, the_broker, settings.webhooks, observer, tracing=tracing
            )
        if Role.API in roles:
            from krolik.access import KeyCache
            from krolik.metrics import StoreGauges
            from krolik.rate_limit import RateLimiter
            from krolik.results.watch import TaskWatch
            from krolik.submit import Submitter
            from krolik.webhooks.targets import WebhookTargets

            replica = _build_replica(settings, mode, the_store)
            reads: StatusReads = replica or the_store
            if replica is not None:
                node.owned.append(replica.replica)
            node.api = ApiServices(
                submitter=Submitter(
                    the_store,
                    settings.api,
                    relay=node.relay,
                    observer=observer,
                    webhooks=WebhookTargets(settings.webhooks),
                ),
                keys=KeyCache(settings.auth.cache_seconds),
                rate_limiter=RateLimiter(settings.rate_limit),
                gauges=StoreGauges(
                    reads,
                    settings.metrics.stuck_after_seconds,
                    max_age_seconds=settings.metrics.refresh_seconds,
                    replica=replica,
                ),
                reads=reads,
                watch=TaskWatch(the_store, the_broker, settings.results),
                replica=replica,
                tracing=tracing,
            )
        if Role.WORKER in roles:
            from krolik.maintenance import LeaseRescuer
            from krolik.worker import Worker

            node.worker = Worker(
                the_store,
                the_broker,
                registry or Registry(),
                settings,
                queues=queues,
                concurrency=concurrency,
                observer=observer,
            )
            node.rescuer = LeaseRescuer(
                the_store, settings.maintenance, observer, broker=the_broker
            )
            from krolik.waker import Waker

            node.waker = Waker(
                the_store,
                defaults={
                    queue: limits.model_dump() for queue, limits in settings.flow.queues.items()
                },
            )
            if settings.retention.enabled:
                from krolik.retention import Cleaner

                node.cleaner = Cleaner(the_store, settings.retention, observer)
        if Role.SCHEDULER in roles or (Role.WORKER in roles and settings.scheduler.enabled):
            from krolik.schedules.scheduler import Scheduler

            node.scheduler = Scheduler(
                the_store,
                settings.scheduler,
                default_queue=settings.default_queue,
                registry=registry,
                observer=observer,
                relay=node.relay,
            )
        return node

    # -- life cycle ----------------------------------------------------------------------
    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Bring the services up; again is a no-op. With ``stop`` (a process's signals), a
        worker waits for the database and the broker instead of failing, as containers
        start in any order; False when ``stop`` was set first."""
        if self._started:
            return True
        self._started = True
        await self.store.open()
        if self.worker is not None:
            waiting = stop or asyncio.Event()
            if not await _retrying("database", self.store.ping, waiting):
                return False
            if not await _retrying("rabbitmq", self.worker.start, waiting):
                return False
        if self.rescuer is not None:
            self.rescuer.start()
        if self.cleaner is not None:
            self.cleaner.start()
        if self.waker is not None:
            self.waker.start()
        if self.scheduler is not None:
            self.scheduler.start()
        if self.api is not None:
            await self.api.watch.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.relay is not None:
            self.relay.start()
        elif self.api is not None:
            # Without a relay of its own, the API still connects, so readiness tells the truth.
            self._connector = asyncio.create_task(_keep_connected(self.broker))
        return True

    async def stop(self) -> None:
        """Stop what runs, in reverse order, and close what the node built."""
        if not self._started:
            return
        self._started = False
        if self.worker is not None and self.worker.accepting:
            await self.worker.stop()
        if self.rescuer is not None:
            await self.rescuer.stop()
        if self.cleaner is not None:
            await self.cleaner.stop()
        if self.waker is not None:
            await self.waker.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
            self._connector = None
        if self.api is not None:
            await self.api.watch.stop()
            await self.api.rate_limiter.close()
        for resource in self.owned:
            await resource.close()


async def _retrying(what: str, connect: object, stop: asyncio.Event) -> bool:
    """Call ``connect`` until it works; False if ``stop`` is set first."""
    assert callable(connect)
    while not stop.is_set():
        try:
            await connect()
            return True
        except (BrokerUnavailable, StoreUnavailable) as exc:
            log.warning("waiting_for_service", service=what, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
    return False


async def _keep_connected(broker: Broker) -> None:
    while True:
        try:
            await broker.connect()
            return
        except BrokerUnavailable as exc:
            log.warning("broker_unavailable", error=str(exc))
            await asyncio.sleep(RETRY_SECONDS)
