#!/usr/bin/env python
"""Submit throughput of single ``POST /tasks/``: wrk, 2 threads, 64 connections.

    .venv/bin/python bench/submit_single.py                  # 15 s after a 3 s warm-up
    .venv/bin/python bench/submit_single.py --duration 30 --worker
    .venv/bin/python bench/submit_single.py --embedded       # krolik dev on SQLite

What it does
  * a throwaway deployment (see bench/common.py): its own database and RabbitMQ names;
  * one ``krolik api`` process (its outbox relay inside, as in production; ``--no-relay``
    leaves it out) and, with ``--worker``, one ``krolik worker`` draining the tasks;
    ``--embedded`` runs one ``krolik dev`` instead (API, relay and worker in one process);
  * wrk POSTs ``{"payload": "x"}`` to /tasks/ from a small Lua script (written to a temp
    file) that also counts the responses by status and reports wrk's latency percentiles;
    a warm-up run first, then the measured run;
  * afterwards compares the tasks in the database with the 2xx wrk counted: a lost write
    is a 2xx with no task. Tasks without a counted 2xx are allowed up to what wrk had in
    flight when it stopped (one per connection) plus its timeouts.

wrk is a closed-loop generator: its latencies omit the time requests could not be sent
while every connection waited (coordinated omission), so read p99 with that in mind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from common import (
    CpuMeter,
    Deployment,
    Profiler,
    add_common_args,
    closing_rows,
    finish,
    fmt_per_unit,
    load_average,
    per_unit,
    print_table,
    run_main,
    say,
)

BENCH = "submit_single"
BODY = '{"payload": "x"}'
MARK = "KROLIK_WRK "

LUA_SCRIPT = r"""
wrk.method = "POST"
wrk.body = '__BODY__'
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local seen = thread:get("statuses")
    for code, n in pairs(seen) do
      counts[code] = (counts[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    '__MARK__{"statuses": {%s}, "requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, "p50": %d, '
      .. '"p90": %d, "p95": %d, "p99": %d, "p99.9": %d}}\n',
    table.concat(parts, ", "), summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max, latency:percentile(50),
    latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9)))
end
""".replace("__BODY__", BODY).replace("__MARK__", MARK)

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """wrk's own text (``--latency``) plus the Lua script's JSON line."""
    figures: dict[str, Any] = {}
    block = output.partition("Latency Distribution")[2]
    for pct, value in re.findall(r"^\s+(\d+)%\s+([\d.]+(?:us|ms|s|m))\s*$", block, re.M):
        figures[f"p{pct}_ms"] = round(to_ms(value), 3)
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    figures["requests_per_s"] = float(found.group(1)) if found else None
    found = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    figures["requests"] = int(found.group(1)) if found else None
    found = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non_2xx_3xx"] = int(found.group(1)) if found else 0
    found = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    figures["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, found.groups()), strict=True))
        if found
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    line = next((ln for ln in output.splitlines() if ln.startswith(MARK)), None)
    figures["lua"] = json.loads(line[len(MARK) :]) if line else None
    return figures


async def run_wrk(
    wrk: str, url: str, script: Path, seconds: float, threads: int, connections: int
) -> tuple[dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    return parse_wrk(text), text


async def bench(args: argparse.Namespace) -> int:
    wrk = shutil.which(args.wrk) or args.wrk
    if not Path(wrk).exists():
        say(BENCH, f"wrk not found ({args.wrk}); install it (apt-get install wrk)")
        return 2
    deployment = Deployment(BENCH, args)
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    script = deployment.dir / "post_task.lua"
    script.write_text(LUA_SCRIPT)
    profiler = Profiler(args, BENCH, deployment.mode)
    try:
        await deployment.set_up()
        machine = await deployment.probe()
        counters_before = await deployment.db_counters()
        api, url = await deployment.start_api(relay=not args.no_relay)
        if args.worker and not deployment.embedded:
            deployment.start_worker(args.concurrency)
        target = f"{url}/tasks/"
        say(BENCH, f"{api.name} pid {api.pid} on {url}; warm-up {args.warmup:g}s")
        if args.warmup > 0:
            await run_wrk(wrk, target, script, args.warmup, args.threads, args.connections)
        before = await deployment.wait_stable_count()
        say(BENCH, f"{before} tasks after the warm-up; measuring {args.duration:g}s")
        load_avg = load_average()
        meter = CpuMeter(deployment.roles)
        profiler.start(api, args.duration)
        meter.start()
        figures, text = await run_wrk(
            wrk, target, script, args.duration, args.threads, args.connections
        )
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

    lua = figures["lua"] or {}
    statuses = {int(code): n for code, n in lua.get("statuses", {}).items()}
    ok_2xx = sum(n for code, n in statuses.items() if 200 <= code < 300)
    non_2xx = {str(code): n for code, n in sorted(statuses.items()) if not 200 <= code < 300}
    errors = lua.get("errors", figures["socket_errors"])
    in_db = after - before
    lost = max(0, ok_2xx - in_db)
    unacknowledged = max(0, in_db - ok_2xx)
    allowed = args.connections + errors.get("timeout", 0) + errors.get("read", 0)
    latency = lua.get("latency_us", {})
    result: dict[str, Any] = {
        "mode": deployment.mode,
        "duration_s": args.duration,
        "threads": args.threads,
        "connections": args.connections,
        "relay": not args.no_relay,
        "worker": bool(args.worker or deployment.embedded),
        "requests_per_s": figures["requests_per_s"],
        "requests": figures["requests"],
        "ok_2xx": ok_2xx,
        "non_2xx": non_2xx,
        "non_2xx_total": sum(non_2xx.values()),
        "socket_errors": errors,
        "p50_ms": figures.get("p50_ms"),
        "p75_ms": figures.get("p75_ms"),
        "p90_ms": figures.get("p90_ms"),
        "p95_ms": round(latency["p95"] / 1000, 3) if "p95" in latency else None,
        "p99_ms": figures.get("p99_ms"),
        "p99_9_ms": round(latency["p99.9"] / 1000, 3) if "p99.9" in latency else None,
        "max_ms": round(latency["max"] / 1000, 3) if "max" in latency else None,
        "tasks_in_db_measured": in_db,
        "lost_writes": lost,
        "unacknowledged_writes": unacknowledged,
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
    result["ok"] = lost == 0 and unacknowledged <= allowed and ok_2xx > 0
    if args.show_wrk:
        print(text, flush=True)
    print_table(
        [
            ("mode", f"{deployment.mode}{' + worker' if result['worker'] else ''}"),
            ("wrk", f"{args.threads} threads, {args.connections} connections, {args.duration:g}s"),
            ("requests/s", f"{result['requests_per_s']:,.0f}"),
            (
                "latency p50 / p90 / p95 / p99",
                f"{result['p50_ms']} / {result['p90_ms']} / {result['p95_ms']} / "
                f"{result['p99_ms']} ms (max {result['max_ms']} ms)",
            ),
            ("2xx / non-2xx", f"{ok_2xx:,} / {result['non_2xx_total']:,} {non_2xx or ''}"),
            ("socket errors", errors),
            (
                "tasks in the DB (measured run)",
                f"{in_db:,}: lost writes {lost}, without a counted 2xx {unacknowledged}"
                f" (allowed <= {allowed}: in flight at the cut, timeouts)",
            ),
            ("PostgreSQL per task (whole run)", fmt_per_unit(db_work)),
            *closing_rows(cpu, meter.run_queue_wait, load_avg, machine, ok=result["ok"]),
        ]
    )
    return finish(BENCH, result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--worker", action="store_true", help="also run one krolik worker")
    parser.add_argument("--concurrency", type=int, default=64, help="the worker's concurrency")
    parser.add_argument("--no-relay", action="store_true", help="APP__RELAY__ENABLED=false")
    parser.add_argument("--wrk", default="wrk", help="the wrk binary")
    parser.add_argument("--show-wrk", action="store_true", help="print wrk's own output")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
