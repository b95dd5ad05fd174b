"""The chaos run's task handler, loaded by ``krolik worker --app chaos_handlers``.

``bench/chaos.py`` starts the workers with ``PYTHONPATH`` pointing at this folder and
``CHAOS_RUNS_DSN`` at its throwaway database. Each execution of the ``chaos`` task:

1. inserts a row into ``chaos_runs`` (task id, attempt, worker id, pid and a fresh
   uuid token) -- the execution *started*;
2. sleeps a random 0..``CHAOS_MAX_SLEEP_MS`` milliseconds (a kill -9 may land here);
3. marks its row finished and returns ``{"token": <token>}`` as the task's result.

So ``chaos_runs`` counts executions per task (a task may legitimately run twice
after its worker was killed), and the stored result names the one execution
whose completion Krolik recorded.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from krolik import TaskContext, task

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _runs_db() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(
                os.environ["CHAOS_RUNS_DSN"], min_size=1, max_size=4, command_timeout=10
            )
    return _pool


@task(name="chaos")
async def chaos(payload: Any, context: TaskContext) -> dict[str, str]:
    token = uuid.uuid4().hex
    db = await _runs_db()
    await db.execute(
        "INSERT INTO chaos_runs (task_id, attempt, worker_id, pid, token)"
        " VALUES ($1, $2, $3, $4, $5)",
        context.task_id,
        context.attempt,
        context.worker_id,
        os.getpid(),
        token,
    )
    max_ms = float(os.environ.get("CHAOS_MAX_SLEEP_MS", "200"))
    await asyncio.sleep(random.uniform(0, max_ms) / 1000)
    await db.execute(
        "UPDATE chaos_runs SET finished_at = clock_timestamp() WHERE token = $1", token
    )
    return {"token": token}
