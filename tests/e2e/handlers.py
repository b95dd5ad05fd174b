"""Task handlers the end-to-end tests load into real workers with ``--app tests.e2e.handlers``."""

from __future__ import annotations

import asyncio
import os
import time
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


@task(name="block_loop", max_attempts=3)
async def block_loop(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Block the worker's event loop (a blocking call inside ``async def``, the mistake this
    handler stands for) for ``payload["seconds"]``; note each run in ``payload["runs"]``."""
    with open(payload["runs"], "a") as runs:
        runs.write(f"{os.getpid()} {context.attempt}\n")
    time.sleep(float(payload["seconds"]))
    return {"pid": os.getpid(), "attempt": context.attempt}


@task(name="block_loop_past_timeout", max_attempts=1, timeout=1)
async def block_loop_past_timeout(payload: dict[str, Any]) -> str:
    """Block the loop past the handler's timeout: the timer cannot fire meanwhile."""
    time.sleep(float(payload["seconds"]))
    return "finished late"


@task(name="note_run")
async def note_run(payload: dict[str, Any], context: TaskContext) -> int:
    """Append "task attempt pid" to the file ``payload["runs"]``: a test counts the runs."""
    with open(payload["runs"], "a") as runs:
        runs.write(f"{context.task_id} {context.attempt} {os.getpid()}\n")
    return context.task_id
