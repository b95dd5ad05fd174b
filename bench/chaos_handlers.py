"""The chaos run's task handler, loaded by ``krolik worker --app chaos_handlers``.

``bench/chaos.py`` starts the workers with ``PYTHONPATH`` pointing at this folder and
``CHAOS_RUNS_DSN`` at its private PostgreSQL server, straight (not through the proxy
that stands between the worker and the database, so a cut of that proxy does not
stop a handler from recording its run). Each execution of the ``chaos`` task:

1. inserts a row into ``chaos_runs`` (task id, attempt, worker id, pid, a fresh uuid
   token, how long it will block the loop) -- the execution *started*;
2. sleeps ``payload["sleep_ms"]`` milliseconds with ``asyncio.sleep`` (a kill -9 may
   land here), and, for the loop-blocking share of the tasks, then calls
   ``time.sleep(payload["block_seconds"])`` inside this ``async def``: the mistake
   that freezes the worker's event loop past its lease;
3. marks its row finished and returns ``{"token": <token>}`` as the task's result.

So ``chaos_runs`` counts executions per task (a task may legitimately run twice
after its worker was killed), and the stored result names the one execution whose
completion Krolik recorded. The two writes are retried while the database restarts
(the token makes a retried insert harmless): a handler never fails on its own.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import asyncpg

from krolik import TaskContext, task

RETRY_FOR_SECONDS = 120.0
"""How long a side-table write is retried (the database restarting, starting up)."""

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _runs_db() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(
                os.environ["CHAOS_RUNS_DSN"], min_size=0, max_size=4, command_timeout=10
            )
    return _pool


async def _write(sql: str, *args: Any) -> None:
    """Run one side-table statement, again and again while the server is away."""
    give_up = time.monotonic() + RETRY_FOR_SECONDS
    while True:
        try:
            db = await _runs_db()
            await db.execute(sql, *args)
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() >= give_up:
                raise
            await asyncio.sleep(0.2)


@task(name="chaos")
async def chaos(payload: dict[str, Any], context: TaskContext) -> dict[str, str]:
    token = uuid.uuid4().hex
    block_seconds = float(payload.get("block_seconds", 0))
    await _write(
        "INSERT INTO chaos_runs (task_id, attempt, worker_id, pid, token, block_seconds)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (token) DO NOTHING",
        context.task_id,
        context.attempt,
        context.worker_id,
        os.getpid(),
        token,
        block_seconds,
    )
    await asyncio.sleep(float(payload.get("sleep_ms", 0)) / 1000)
    if block_seconds > 0:
        time.sleep(block_seconds)  # the point: a blocking call that freezes the loop
    await _write("UPDATE chaos_runs SET finished_at = clock_timestamp() WHERE token = $1", token)
    return {"token": token}
