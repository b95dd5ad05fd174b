"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from krolik.api.deps import BrokerDep, StoreDep, api_of
from krolik.api.schemas import Health
from krolik.errors import KrolikError

router = APIRouter(prefix="/health", tags=["health"])
CHECK_TIMEOUT_SECONDS = 3.0


@router.get("", response_model=Health, summary="The process is alive")
async def alive() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="PostgreSQL and RabbitMQ are reachable",
)
async def ready(store: StoreDep, broker: BrokerDep, request: Request) -> JSONResponse:
    checks = {
        "database": await _check(store.ping()),
        "broker": await _check(broker.ping()),
    }
    healthy = all(state == "ok" for state in checks.values())
    replica = api_of(request).replica
    if replica is not None:
        # Reads fall back to the primary, so an unusable replica leaves the API ready.
        state = await replica.check()
        checks["replica"] = "ok" if state.usable else f"unusable: {state.reason}"
    body = Health(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


async def _check(probe: object) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except (KrolikError, TimeoutError, OSError):
        return "unavailable"
    return "ok"
