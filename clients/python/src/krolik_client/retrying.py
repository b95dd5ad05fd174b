"""When a request is sent again, and after how long.

Only what cannot duplicate anything is retried: an answer 429 or 503 (the server did not
act on the request), a connection that could not be made (nothing was sent), and, for a
request that is safe to repeat (reads, settings that set a value, submits, which always
carry an idempotency key), a connection dropped before the answer came.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRIED_STATUSES = frozenset({429, 503})
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors raised before any byte of the request left."""


@dataclass(frozen=True, slots=True)
class Retries:
    """``attempts`` tries in all, ``backoff`` seconds doubled each time (with jitter, at
    most ``backoff_max``); a Retry-After of the server is waited for as it says, unless it
    asks for more than ``retry_after_max`` seconds, which ends the retries."""

    attempts: int = 4
    backoff: float = 0.2
    backoff_max: float = 5.0
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    @classmethod
    def of(cls, retries: int | Retries) -> Retries:
        """``retries=3`` means three retries after the first try."""
        return retries if isinstance(retries, Retries) else cls(attempts=retries + 1)

    def after_response(self, tries: int, response: httpx.Response) -> float | None:
        """Seconds to wait before sending again; None: the answer stands."""
        if response.status_code not in RETRIED_STATUSES or tries + 1 >= self.attempts:
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            return self.backoff_for(tries)
        return retry_after if retry_after <= self.retry_after_max else None

    def after_error(
        self, tries: int, error: httpx.TransportError, replayable: bool
    ) -> float | None:
        """Seconds to wait before sending again; None: the error stands."""
        if tries + 1 >= self.attempts:
            return None
        if isinstance(error, NOT_SENT) or replayable:
            return self.backoff_for(tries)
        return None

    def after_stream_end(self, tries: int) -> float | None:
        """Seconds to wait before following a stream the server ended early."""
        return None if tries + 1 >= self.attempts else self.backoff_for(tries)

    def backoff_for(self, tries: int) -> float:
        ceiling = min(self.backoff_max, self.backoff * 2.0**tries)
        return ceiling * random.uniform(0.5, 1.0)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, or an HTTP date); None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
