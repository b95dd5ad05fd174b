"""A request id for every HTTP request: taken from X-Request-ID or made.

The id is echoed in the answer, bound to the log context of the request and stored
on the tasks the request creates, so a worker's log lines can be traced back to the
request (``krolik/api/edge.py`` does the echoing and binding).
"""

from __future__ import annotations

import os
import re

from starlette.types import Scope

HEADER = b"x-request-id"
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh random one."""
    for name, value in scope.get("headers", ()):
        if name == HEADER:
            given: str = value.decode("latin-1")
            if _ACCEPTABLE.match(given):
                return given
            break
    return os.urandom(16).hex()
