#!/usr/bin/env python
"""The relay's outbox claim with a million scheduled tasks: its plan and its cost.

    python bench/plans.py                  # 1,000,000 scheduled rows, 100 due
    python bench/plans.py --scheduled 200000 --due 10

A claim takes at most a batch of due rows. When fewer than a batch are due, its index
scan on ``available_at`` has to stop at the first row not due yet; that takes a bound
on the scan, which PostgreSQL can only draw from a value fixed for the statement
(``now()``). The statement Krolik ran before compared with ``clock_timestamp()``,
which changes row by row: the bound becomes a filter, and the scan reads every
scheduled row, twice a second per relay. This runs both statements (the claim's
``UPDATE`` rolled back each time) on a throwaway database filled with scheduled and due
rows, prints each plan with its buffers, and the median time of ``--runs`` runs.

It creates ``krolik_plans_<uuid>`` on the server of ``APP__DB__URL`` and drops it at the
end. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from krolik.migrate import upgrade_async
from krolik.store.postgres import CLAIM_OUTBOX_SQL

DEFAULT_DB_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

BEFORE_SQL = """
UPDATE krolik_outbox
SET claimed_until = clock_timestamp() + make_interval(secs => $2)
WHERE id IN (
    SELECT id FROM krolik_outbox
    WHERE available_at <= clock_timestamp()
      AND (claimed_until IS NULL OR claimed_until < clock_timestamp())
    ORDER BY available_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, task_id, queue, name
"""
"""The claim as it was before (22849d0): every time condition on clock_timestamp()."""

FILL_SQL = """
WITH new AS (
    INSERT INTO krolik_tasks (name, queue, payload, status, attempts, cancel_requested,
                              run_token, run_at, created_at, updated_at)
    SELECT 'echo', 'default', to_jsonb(g), 'pending', 0, false, 0,
           now() + make_interval(secs => $2 + $3 * g), now(), now()
    FROM generate_series(0, $1 - 1) AS g
    RETURNING id, run_at
)
INSERT INTO krolik_outbox (task_id, queue, name, available_at)
SELECT id, 'default', 'echo', run_at FROM new
"""
"""``$1`` tasks, each with its outbox row, due from ``$2`` seconds from now (negative: in
the past, due already) on, ``$3`` seconds apart."""


def extra(sql: str) -> tuple[Any, ...]:
    return ([],) if "$3" in sql else ()


class _Rollback(Exception):
    """Leaves the transaction of one run, undoing its claim."""


async def measure(conn: asyncpg.Connection, sql: str, runs: int) -> dict[str, Any]:
    plan: list[str] = []
    times: list[float] = []
    for run in range(runs):
        try:
            async with conn.transaction():
                started = time.perf_counter()
                rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", 200, 30.0, *extra(sql))
                times.append(time.perf_counter() - started)
                if run == 0:
                    plan = [row[0] for row in rows]
                raise _Rollback  # the claim's UPDATE is undone: each run sees the same rows
        except _Rollback:
            pass
    return {"plan": plan, "median_ms": round(statistics.median(times) * 1000, 2)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduled", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    url = make_url(os.environ.get("APP__DB__URL", DEFAULT_DB_URL))
    name = f"krolik_plans_{uuid.uuid4().hex[:10]}"
    connect = {"host": url.host, "port": url.port or 5432, "user": url.username}
    admin = await asyncpg.connect(database=url.database or "postgres", **connect)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await upgrade_async(url.set(database=name).render_as_string(hide_password=False))
        conn = await asyncpg.connect(database=name, **connect)
        try:
            started = time.perf_counter()
            await conn.execute(FILL_SQL, args.scheduled, 3600.0, 0.01)  # from an hour on
            await conn.execute(FILL_SQL, args.due, -60.0, 0.001)
            await conn.execute("VACUUM ANALYZE krolik_outbox")
            await conn.execute("VACUUM ANALYZE krolik_tasks")
            print(
                f"filled {args.scheduled:,} scheduled and {args.due:,} due rows in "
                f"{time.perf_counter() - started:.1f} s"
            )
            figures: dict[str, Any] = {}
            for label, sql in (("before", BEFORE_SQL), ("now", CLAIM_OUTBOX_SQL)):
                result = await measure(conn, sql, args.runs)
                figures[label] = result
                print(f"\n== {label}: median {result['median_ms']} ms over {args.runs} runs")
                print("\n".join(result["plan"]))
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    ratio = figures["before"]["median_ms"] / max(figures["now"]["median_ms"], 1e-6)
    print(f"\nthe claim is {ratio:,.0f}x cheaper with a bound on its scan")
    print(
        json.dumps(
            {
                "bench": "plans",
                "scheduled": args.scheduled,
                "due": args.due,
                "before_ms": figures["before"]["median_ms"],
                "now_ms": figures["now"]["median_ms"],
                "ratio": round(ratio, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
