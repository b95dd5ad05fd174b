"""The worker's own small HTTP server: /metrics, /health and /health/ready.

Readiness means the worker takes tasks and reaches both services, so a container
health check can restart a worker that lost them for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from krolik.errors import KrolikError
from krolik.metrics import CONTENT_TYPE_LATEST, Metrics
from krolik.worker.runtime import Worker

CHECK_TIMEOUT_SECONDS = 3.0


async def _check(probe: object) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except (KrolikError, TimeoutError, OSError):
        return "unavailable"
    return "ok"


def probe_app(worker: Worker, metrics: Metrics) -> Starlette:
    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def alive(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "worker_id": worker.worker_id})

    async def ready(_: Request) -> JSONResponse:
        checks = {
            "database": await _check(worker.store.ping()),
            "broker": await _check(worker.broker.ping()),
            "consuming": "ok" if worker.accepting else "unavailable",
        }
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {
                "status": "ok" if healthy else "unavailable",
                "checks": checks,
                "running": len(worker.runs),
            },
            status_code=200 if healthy else 503,
        )

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/health", alive),
            Route("/health/ready", ready),
        ]
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside a process that handles SIGTERM/SIGINT itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def probe_server(worker: Worker, metrics: Metrics, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        probe_app(worker, metrics), host=host, port=port, log_config=None, access_log=False
    )
    return EmbeddedServer(config)
