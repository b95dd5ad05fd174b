"""Task handlers the end-to-end tests load into real workers with ``--app tests.e2e.handlers``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from krolik import TaskContext, task


@task(name="slow")
async def slow(payload: Any, context: TaskContext) -> dict[str, Any]:
    """Sleep ``payload["seconds"]``, then say which process and attempt ran it."""
    seconds = float(payload.get("seconds", 0)) if isinstance(payload, dict) else 0.0
    await asyncio.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid(), "attempt": context.attempt}


@task(name="whoami")
async def whoami(payload: Any, context: TaskContext) -> dict[str, Any]:
    return {"pid": os.getpid(), "attempt": context.attempt, "payload": payload}
