"""Rate limiting per API key (or client address) with the ``limits`` library.

With the default ``memory://`` storage each API process counts on its own: with N
processes behind a balancer a client gets up to N times the limit. A shared
storage (Redis, Memcached, MongoDB) makes the limit cluster-wide.
"""

from __future__ import annotations

import inspect
import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from krolik.errors import ConfigurationError
from krolik.settings import RateLimitSettings


class RateLimited(Exception):
    def __init__(self, retry_after_seconds: int, limit: str) -> None:
        super().__init__(limit)
        self.retry_after_seconds = retry_after_seconds
        self.limit = limit


class RateLimiter:
    def __init__(self, settings: RateLimitSettings) -> None:
        try:
            self.items: list[RateLimitItem] = parse_many(settings.limit) if settings.limit else []
        except ValueError as exc:
            raise ConfigurationError(f"APP__RATE_LIMIT__LIMIT is not valid: {exc}") from None
        url = settings.storage_url
        storage = storage_from_string(url if url.startswith("async+") else f"async+{url}")
        self._limiter = MovingWindowRateLimiter(storage)

    async def close(self) -> None:
        """Close a shared storage's connections (``limits`` has no call for it)."""
        client = getattr(getattr(self._limiter.storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            result = pool.disconnect()
            if inspect.isawaitable(result):
                await result

    @property
    def enabled(self) -> bool:
        return bool(self.items)

    async def hit(self, identity: str) -> None:
        """Count one request of ``identity``; raise ``RateLimited`` past any limit."""
        for item in self.items:
            if not await self._limiter.hit(item, identity):
                stats = await self._limiter.get_window_stats(item, identity)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(wait, str(item))
