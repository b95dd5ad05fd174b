"""The one ASGI layer every HTTP request passes through before FastAPI routes it.

It gives the request its id (echoed in ``X-Request-ID``, bound to the log context),
caps the body (413, declared or streamed) and records the request in the metrics by
route template and status; it also serves the direct routes (``krolik/api/direct.py``).
One layer rather than three: each ASGI middleware wraps ``send`` and ``receive`` and
costs coroutine calls per message of every request.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from krolik.api.direct import DirectRoutes
from krolik.api.limits import BodyTooLarge, declared_length, reject_too_large
from krolik.api.request_id import HEADER, request_id_of
from krolik.log import current_request_id
from krolik.metrics import Metrics


class HttpEdge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        direct: DirectRoutes | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        echoed = (HEADER, request_id.encode())
        max_bytes = self.max_body_bytes
        status = 500
        responding = False
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        async def edge_send(message: Message) -> None:
            nonlocal status, responding
            if message["type"] == "http.response.start":
                status, responding = message["status"], True
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            if declared_length(scope) > max_bytes:
                await reject_too_large(edge_send, max_bytes)
            else:
                route = self.direct.match(scope) if self.direct is not None else None
                try:
                    if route is not None and self.direct is not None:
                        await self.direct.serve(route, scope, limited_receive, edge_send)
                    else:
                        await self.app(scope, limited_receive, edge_send)
                except BodyTooLarge:
                    if not responding:
                        await reject_too_large(edge_send, max_bytes)
        finally:
            current_request_id.reset(token)
            route = scope.get("route")
            self.metrics.http_request_done(
                scope.get("method", "GET"),
                getattr(route, "path", None) or "unmatched",
                status,
                time.perf_counter() - started,
            )
