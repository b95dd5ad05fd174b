"""Handlers every worker has with no user code: the seed's default, echo and sleep."""

from __future__ import annotations

import asyncio
from typing import Any

from krolik.registry import Registry

DEFAULT_TASK_NAME = "default"

builtin_registry = Registry()


@builtin_registry.task(name=DEFAULT_TASK_NAME)
async def process(payload: Any) -> str:
    """The seed's task: a task posted without a name is processed and gets a result."""
    return f"Processed {payload!r}"


@builtin_registry.task(name="echo")
async def echo(payload: Any) -> Any:
    return payload


@builtin_registry.task(name="sleep")
async def sleep(payload: Any) -> dict[str, float]:
    """Sleep for ``payload["seconds"]`` (a number, or a payload that is one)."""
    seconds = payload.get("seconds", 0) if isinstance(payload, dict) else payload
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise ValueError("sleep wants a payload {'seconds': <non-negative number>}")
    await asyncio.sleep(float(seconds))
    return {"slept": float(seconds)}
