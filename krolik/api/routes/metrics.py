"""Prometheus metrics of the API process, with the gauges read from the store."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from krolik.api.deps import api_of, node_of
from krolik.errors import StoreError
from krolik.log import get_logger
from krolik.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])
log = get_logger(__name__)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    counters, gauges = node_of(request).metrics, api_of(request).gauges
    try:
        await gauges.refresh()
    except StoreError as exc:  # counters still tell something; the gauges keep their last values
        log.warning("metrics_gauges_stale", error=str(exc))
    return Response(counters.exposition(gauges), media_type=CONTENT_TYPE_LATEST)
