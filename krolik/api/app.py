"""The FastAPI app of a node: its routes, error handlers and edge over what the node built.

The app builds nothing itself. Its lifespan starts and stops the node (a no-op for a node
started already, as ``krolik dev`` does), so an app run by uvicorn or by a test's
lifespan manager brings up exactly what its node holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from krolik.api.direct import DirectRoutes
from krolik.api.edge import HttpEdge
from krolik.api.errors import install_error_handlers
from krolik.api.routes import events, health, queues, schedules, tasks, workers
from krolik.api.routes import metrics as metrics_route
from krolik.heap import tune_garbage_collector
from krolik.node import Mode, Node


def create_app(node: Node) -> FastAPI:
    """The API of ``node``, a node built with the ``api`` role."""
    if node.api is None:
        raise ValueError("the node was not built with the api role")
    settings = node.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        tune_garbage_collector()
        try:
            yield
        finally:
            await node.stop()

    # The interactive docs: with APP__DEBUG (the seed's rule, kept in production), and
    # always on ``krolik dev``, a developer's own machine.
    docs = settings.debug or node.mode is Mode.EMBEDDED
    app = FastAPI(
        title="Krolik",
        summary="A task queue that never loses a task.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.node = node
    for router in (
        tasks.router,
        events.router,
        queues.router,
        workers.router,
        schedules.router,
        health.router,
        metrics_route.router,
    ):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        HttpEdge,
        metrics=node.metrics,
        max_body_bytes=settings.api.max_payload_bytes,
        direct=DirectRoutes(app, tasks.router, tasks.DIRECT_ENDPOINTS),
    )
    return app
