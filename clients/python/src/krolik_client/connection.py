"""Where the API is and how to present oneself to it, from arguments or the environment."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from krolik_client.calls import NO_BODY, Call
from krolik_client.version import __version__

DEFAULT_URL = "http://127.0.0.1:8000"
"""Where ``krolik dev`` listens."""
URL_VARIABLE = "KROLIK_URL"
API_KEY_VARIABLE = "KROLIK_API_KEY"
STREAM_READ_TIMEOUT = 60.0
"""An event stream sends a keepalive every 15 s by default: a minute of silence means the
connection is gone, and the stream is taken up again where it was."""


@dataclass(frozen=True, slots=True)
class Connection:
    base_url: str
    headers: dict[str, str]
    timeout: float

    @classmethod
    def of(
        cls,
        url: str | None,
        api_key: str | None,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> Connection:
        base_url = url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
        key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE)
        sent = {"User-Agent": f"krolik-client/{__version__}", **(headers or {})}
        if key:
            sent["Authorization"] = f"Bearer {key}"
        return cls(base_url.rstrip("/"), sent, timeout)

    def timeout_for(self, call: Call[Any]) -> httpx.Timeout:
        """The client's timeout, the read longer by what the server may wait."""
        return httpx.Timeout(self.timeout, read=self.timeout + call.wait)

    def stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT))

    def request(self, http: httpx.AsyncClient | httpx.Client, call: Call[Any]) -> httpx.Request:
        """The request of ``call``; one request id for all its tries, so the server's logs
        show a retried request as one."""
        return http.build_request(
            call.method,
            call.url,
            params=call.params or None,
            json=None if call.body is NO_BODY else call.body,
            headers={"X-Request-ID": uuid.uuid4().hex},
            timeout=self.timeout_for(call),
        )
