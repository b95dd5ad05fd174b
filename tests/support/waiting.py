"""Waiting on a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

Condition = Callable[[], bool | Awaitable[bool]]


async def wait_until(
    condition: Condition, timeout: float = 10.0, what: str = "", interval: float = 0.02
) -> None:
    """Poll ``condition`` (sync or async) until it holds; fail the test on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or condition}")
        await asyncio.sleep(interval)
