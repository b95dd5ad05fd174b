"""A hard cap on request body size, enforced before the body is parsed."""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.types import Scope, Send


class BodyTooLarge(HTTPException):
    """The body outgrew the limit while streaming in.

    An ``HTTPException``: FastAPI reads the body inside the route and would turn any
    other error into a 400 "error parsing the body"; this one it answers with 413.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, detail=f"the request body is larger than {max_bytes} bytes")


def declared_length(scope: Scope) -> int:
    """The Content-Length the request declares (0 when none or unreadable)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def reject_too_large(send: Send, max_bytes: int) -> None:
    """Answer 413 without reading the body."""
    body = orjson.dumps({"detail": f"the request body is larger than {max_bytes} bytes"})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
