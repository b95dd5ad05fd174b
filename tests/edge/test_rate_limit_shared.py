"""A shared rate-limit storage makes the limit cluster-wide: two API processes, one budget."""

from __future__ import annotations

import socket
import uuid

import pytest

from krolik.rate_limit import RateLimited, RateLimiter
from krolik.settings import RateLimitSettings
from tests.conftest import service_missing

REDIS = ("127.0.0.1", 6379)


@pytest.fixture
def redis_url() -> str:
    pytest.importorskip("coredis", reason="install limits[async-redis] for a Redis storage")
    try:
        socket.create_connection(REDIS, timeout=2).close()
    except OSError as exc:
        service_missing(f"Redis is not reachable at {REDIS[0]}:{REDIS[1]}: {exc}")
    return f"redis://{REDIS[0]}:{REDIS[1]}"


async def test_two_limiters_on_one_redis_share_the_budget(redis_url: str) -> None:
    settings = RateLimitSettings(limit="5/minute", storage_url=redis_url)
    first, second = RateLimiter(settings), RateLimiter(settings)  # as two API processes
    try:
        client = f"key:test-{uuid.uuid4().hex}"
        for _ in range(3):
            await first.hit(client)
        for _ in range(2):
            await second.hit(client)
        with pytest.raises(RateLimited) as refused:
            await first.hit(client)
        assert refused.value.retry_after_seconds >= 1
        # Another client still has its own budget.
        await second.hit(f"key:test-{uuid.uuid4().hex}")
    finally:
        await first.close()
        await second.close()


async def test_memory_storage_counts_per_process() -> None:
    settings = RateLimitSettings(limit="2/minute", storage_url="memory://")
    first, second = RateLimiter(settings), RateLimiter(settings)
    client = f"key:test-{uuid.uuid4().hex}"
    for _ in range(2):
        await first.hit(client)
        await second.hit(client)  # its own count: not refused
    with pytest.raises(RateLimited):
        await first.hit(client)
