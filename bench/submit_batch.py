#!/usr/bin/env python
"""Submit throughput of ``POST /tasks/batch``: a few connections, 1,000 tasks per request.

    .venv/bin/python bench/submit_batch.py                       # 4 connections, 15 s
    .venv/bin/python bench/submit_batch.py --connections 8 --batch 500 --no-relay
    .venv/bin/python bench/submit_batch.py --embedded

What it does
  * a throwaway deployment (see bench/common.py) and one ``krolik api`` (relay inside
    unless ``--no-relay``), or one ``krolik dev`` with ``--embedded``;
  * ``--connections`` asyncio httpx clients, each POSTing one batch after the other
    (closed loop), a body of ``--batch`` tasks ``{"payload": "x"}`` serialised once;
    a warm-up first, then ``--duration`` seconds; requests still in flight at the end
    are awaited and counted, and the rate is taken over the time until the last answer;
  * then checks that the database holds exactly the tasks the 201s named.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from common import (
    CpuMeter,
    Deployment,
    Profiler,
    add_common_args,
    closing_rows,
    finish,
    fmt_per_unit,
    fmt_summary,
    load_average,
    per_unit,
    print_table,
    run_main,
    say,
    summary_ms,
)

BENCH = "submit_batch"


@dataclass
class Tally:
    tasks: int = 0
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    last_answer: float = 0.0


async def load(
    url: str, body: bytes, batch: int, connections: int, seconds: float
) -> tuple[Tally, float]:
    """``connections`` closed loops for ``seconds``; (tally, seconds until the last answer)."""
    tally = Tally()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.monotonic()
        stop_at = started + seconds

        async def loop() -> None:
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.TransportError:
                    tally.errors += 1
                    await asyncio.sleep(0.1)
                    continue
                now = time.monotonic()
                tally.requests += 1
                tally.statuses[response.status_code] = (
                    tally.statuses.get(response.status_code, 0) + 1
                )
                if response.status_code == 201:
                    created = orjson.loads(response.content)["created"]
                    tally.tasks += sum(1 for flag in created if flag)
                    tally.latencies.append(now - sent)
                tally.last_answer = now

        await asyncio.gather(*(loop() for _ in range(connections)))
    return tally, max(tally.last_answer - started, 1e-9)


async def bench(args: argparse.Namespace) -> int:
    deployment = Deployment(BENCH, args)
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    body = orjson.dumps({"tasks": [{"payload": "x"} for _ in range(args.batch)]})
    profiler = Profiler(args, BENCH, deployment.mode)
    try:
        await deployment.set_up()
        machine = await deployment.probe()
        counters_before = await deployment.db_counters()
        api, url = await deployment.start_api(relay=not args.no_relay)
        target = f"{url}/tasks/batch"
        say(BENCH, f"{api.name} pid {api.pid} on {url}; warm-up {args.warmup:g}s")
        if args.warmup > 0:
            await load(target, body, args.batch, args.connections, args.warmup)
        before = await deployment.wait_stable_count()
        say(
            BENCH,
            f"{before} tasks after the warm-up; measuring {args.duration:g}s, "
            f"{args.connections} connections x {args.batch} tasks per request",
        )
        load_avg = load_average()
        meter = CpuMeter(deployment.roles)
        profiler.start(api, args.duration)
        meter.start()
        tally, elapsed = await load(target, body, args.batch, args.connections, args.duration)
        cpu = meter.stop()
        profile = await profiler.stop()
        after = await deployment.wait_stable_count()
        counts = await deployment.status_counts()
        await deployment.stop_all()
        db_work = per_unit(counters_before, await deployment.db_counters(), after)
    except BaseException:
        deployment.failed = True
        raise
    finally:
        await deployment.clean_up()

    in_db = after - before
    latency = summary_ms(tally.latencies)
    non_201 = {str(code): n for code, n in sorted(tally.statuses.items()) if code != 201}
    result: dict[str, Any] = {
        "mode": deployment.mode,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 3),
        "connections": args.connections,
        "batch": args.batch,
        "relay": not args.no_relay,
        "tasks_per_s": round(tally.tasks / elapsed, 1),
        "requests_per_s": round(tally.requests / elapsed, 2),
        "tasks": tally.tasks,
        "requests": tally.requests,
        "non_201": non_201,
        "transport_errors": tally.errors,
        "request_latency_ms": latency,
        "tasks_in_db_measured": in_db,
        "lost_writes": max(0, tally.tasks - in_db),
        "unacknowledged_writes": max(0, in_db - tally.tasks),
        "status_counts": counts,
        "db_per_task": db_work,
        "cpu_cores": cpu,
        "run_queue_wait": meter.run_queue_wait,
        "load_average_1m": load_avg,
        "machine": machine,
        "code": deployment.code,
        "nice": deployment.nice,
        "profile": profile,
    }
    result["ok"] = tally.tasks > 0 and in_db == tally.tasks and not non_201
    print_table(
        [
            ("mode", deployment.mode),
            (
                "load",
                f"{args.connections} connections x {args.batch} tasks/request, "
                f"{args.duration:g}s (last answer at {elapsed:.2f}s)",
            ),
            ("tasks/s", f"{result['tasks_per_s']:,.0f}"),
            ("requests/s", f"{result['requests_per_s']:,.1f}"),
            ("request latency", fmt_summary(latency)),
            ("non-201 / transport errors", f"{non_201 or 0} / {tally.errors}"),
            (
                "tasks in the DB (measured run)",
                f"{in_db:,} for {tally.tasks:,} acknowledged: lost {result['lost_writes']}, "
                f"unacknowledged {result['unacknowledged_writes']}",
            ),
            ("PostgreSQL per task (whole run)", fmt_per_unit(db_work)),
            *closing_rows(cpu, meter.run_queue_wait, load_avg, machine, ok=result["ok"]),
        ]
    )
    return finish(BENCH, result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (0: none)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000, help="tasks per request")
    parser.add_argument("--no-relay", action="store_true", help="APP__RELAY__ENABLED=false")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
