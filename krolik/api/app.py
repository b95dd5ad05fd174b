"""The FastAPI app factory. Settings come in; nothing connects until start-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from krolik.api.admission import Admission
from krolik.api.auth import KeyCache
from krolik.api.direct import DirectRoutes
from krolik.api.edge import HttpEdge
from krolik.api.errors import install_error_handlers
from krolik.api.rate_limit import RateLimiter
from krolik.api.routes import health, queues, tasks, workers
from krolik.api.routes import metrics as metrics_route
from krolik.batching import MicroBatcher
from krolik.broker.base import Broker
from krolik.components import build_broker, build_store
from krolik.errors import BrokerUnavailable
from krolik.events import Observers
from krolik.heap import tune_garbage_collector
from krolik.log import get_logger
from krolik.metrics import Metrics, StoreGauges
from krolik.relay import OutboxRelay, handing_over
from krolik.settings import Settings
from krolik.store.base import Enqueued, NewTask, TaskStore

log = get_logger(__name__)


async def _keep_broker_connected(broker: Broker, interval: float = 2.0) -> None:
    """Without an in-process relay, still connect, so readiness tells the truth."""
    while True:
        try:
            await broker.connect()
            return
        except BrokerUnavailable as exc:
            log.warning("broker_unavailable", error=str(exc))
            await asyncio.sleep(interval)


def create_app(
    settings: Settings,
    *,
    store: TaskStore | None = None,
    broker: Broker | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """Build the API. ``store``/``broker`` override the ones the settings pick (tests, dev).

    Whoever creates the store and broker closes them: the app closes only its own.
    ``metrics`` lets a process share one set of metrics between the API and a worker.
    """
    the_metrics = metrics or Metrics()
    observer = Observers([the_metrics])
    the_store = store or build_store(settings)
    the_broker = broker or build_broker(settings)
    owned = [
        resource for resource, given in ((the_broker, broker), (the_store, store)) if given is None
    ]
    relay = (
        OutboxRelay(the_store, the_broker, settings.relay, observer)
        if settings.relay.enabled
        else None
    )

    rate_limiter = RateLimiter(settings.rate_limit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_store.open()
        connector: asyncio.Task[None] | None = None
        if relay is not None:
            relay.start()
        else:
            connector = asyncio.create_task(_keep_broker_connected(the_broker))
        tune_garbage_collector()
        try:
            yield
        finally:
            if relay is not None:
                await relay.stop()
            if connector is not None:
                connector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connector
            for resource in owned:
                await resource.close()
            await rate_limiter.close()

    app = FastAPI(
        title="Krolik",
        summary="A task queue that never loses a task.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if settings.debug else None,
        redoc_url="/redoc" if settings.debug else None,
        openapi_url="/openapi.json" if settings.debug else None,
    )
    app.state.settings = settings
    app.state.store = the_store
    app.state.broker = the_broker
    app.state.relay = relay
    app.state.observer = observer
    app.state.metrics = the_metrics
    # Group commit: concurrent submissions share one transaction. When this process's
    # relay is idle, their outbox rows are written claimed for it and handed over.

    async def commit(new_tasks: Sequence[NewTask]) -> Sequence[Enqueued]:
        return await the_store.enqueue(new_tasks, claim_outbox_seconds=handing_over(relay))

    app.state.committer = MicroBatcher(commit)
    app.state.keyed_committer = MicroBatcher(commit)
    app.state.key_cache = KeyCache(settings.auth.cache_seconds)
    app.state.rate_limiter = rate_limiter
    app.state.admission = Admission(settings.api)
    app.state.gauges = StoreGauges(
        the_store,
        settings.metrics.stuck_after_seconds,
        max_age_seconds=settings.metrics.refresh_seconds,
    )
    for router in (
        tasks.router,
        queues.router,
        workers.router,
        health.router,
        metrics_route.router,
    ):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        HttpEdge,
        metrics=the_metrics,
        max_body_bytes=settings.api.max_payload_bytes,
        direct=DirectRoutes(app, tasks.router, tasks.DIRECT_ENDPOINTS),
    )
    return app
