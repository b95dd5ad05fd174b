#!/usr/bin/env python
"""End-to-end latency at a steady rate: submit-to-done as the database records it.

    .venv/bin/python bench/latency.py                        # 100 tasks/s for 20 s
    .venv/bin/python bench/latency.py --rate 500 --duration 30 --concurrency 16
    .venv/bin/python bench/latency.py --embedded             # krolik dev on SQLite

What it does
  * a throwaway deployment (see bench/common.py): one ``krolik api`` (relay inside) and
    one ``krolik worker``, or one ``krolik dev`` with ``--embedded``;
  * submits ``{"payload": "x"}`` (the builtin ``default`` handler) by ``POST /tasks/`` on
    an open-loop schedule: task i is sent at start + i / rate whether or not earlier
    requests have answered (each request is its own asyncio task); a warm-up at the same
    rate first, left out of the figures;
  * waits until every task is final, then reads created_at, started_at and finished_at
    from the database and reports, per task:
      - completion: finished_at - created_at (the true completion time, both stamped by
        the database clock),
      - client to done: finished_at - the client's send time (same machine, same clock),
      - queue wait: started_at - created_at, and the HTTP response time;
    each as p50 / p95 / p99 / max.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from common import (
    CpuMeter,
    Deployment,
    Proc,
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
    to_epoch,
)

BENCH = "latency"


@dataclass
class Sent:
    index: int
    scheduled: float  # time.time() the schedule wanted
    sent: float = 0.0  # time.time() just before the request went to the client
    answered: float = 0.0
    status: int = 0
    task_id: int | None = None
    error: str | None = None


async def wait_worker_started(worker: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"{worker.name} exited early:\n{worker.tail()}")
        if '"worker_started"' in worker.log_path.read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{worker.name} did not start within {timeout}s:\n{worker.tail()}")


async def submit_open_loop(
    client: httpx.AsyncClient, url: str, rate: float, count: int, first_index: int
) -> list[Sent]:
    """``count`` POSTs, the i-th at start + i / rate, each without waiting for the others."""
    sent: list[Sent] = []
    jobs: list[asyncio.Task[None]] = []
    headers = {"content-type": "application/json"}
    body = b'{"payload": "x"}'

    async def post(item: Sent) -> None:
        item.sent = time.time()
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            item.error = type(exc).__name__
            return
        item.answered = time.time()
        item.status = response.status_code
        if response.status_code == 201:
            item.task_id = int(response.json()["task_id"])

    start_mono, start_wall = time.monotonic(), time.time()
    for i in range(count):
        due = i / rate
        delay = start_mono + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        item = Sent(index=first_index + i, scheduled=start_wall + due)
        sent.append(item)
        jobs.append(asyncio.create_task(post(item)))
    await asyncio.gather(*jobs)
    return sent


async def bench(args: argparse.Namespace) -> int:
    deployment = Deployment(BENCH, args)
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    profiler = Profiler(args, BENCH, deployment.mode)
    warm_count = round(args.rate * args.warmup)
    count = round(args.rate * args.duration)
    try:
        await deployment.set_up()
        machine = await deployment.probe()
        counters_before = await deployment.db_counters()
        api, url = await deployment.start_api(concurrency=args.concurrency)
        if deployment.embedded:
            busiest = api
        else:
            worker = deployment.start_worker(args.concurrency)
            await wait_worker_started(worker)
            busiest = api if args.profile_target == "api" else worker
        limits = httpx.Limits(max_connections=args.connections)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            target = f"{url}/tasks/"
            say(BENCH, f"warm-up: {warm_count} tasks at {args.rate:g}/s")
            warm = await submit_open_loop(client, target, args.rate, warm_count, 0)
            await deployment.wait_all_final(len(warm), 60)
            say(BENCH, f"measuring: {count} tasks at {args.rate:g}/s ({args.duration:g}s)")
            load_avg = load_average()
            meter = CpuMeter(deployment.roles)
            profiler.start(busiest, args.duration)
            meter.start()
            measured = await submit_open_loop(client, target, args.rate, count, warm_count)
            cpu = meter.stop()
        accepted = [item for item in measured if item.task_id is not None]
        reached, _ = await deployment.wait_all_final(
            len(warm) + len(measured), args.timeout, interval=0.1
        )
        profile = await profiler.stop()
        rows = await deployment.fetch(
            "SELECT id, status, created_at, started_at, finished_at FROM krolik_tasks"
        )
        counts = await deployment.status_counts()
        await deployment.stop_all()
        db_work = per_unit(counters_before, await deployment.db_counters(), len(rows))
    except BaseException:
        deployment.failed = True
        raise
    finally:
        await deployment.clean_up()

    by_id = {row["id"]: row for row in rows}
    completion, client_done, queue_wait, run_time, http, lag = [], [], [], [], [], []
    missing = not_done = 0
    for item in accepted:
        row = by_id.get(item.task_id)
        if row is None:
            missing += 1
            continue
        created, started, finished = (
            to_epoch(row["created_at"]),
            to_epoch(row["started_at"]),
            to_epoch(row["finished_at"]),
        )
        http.append(item.answered - item.sent)
        lag.append(item.sent - item.scheduled)
        if row["status"] != "done" or created is None or finished is None or started is None:
            not_done += 1
            continue
        completion.append(finished - created)
        client_done.append(finished - item.sent)
        queue_wait.append(started - created)
        run_time.append(finished - started)
    sent_span = (measured[-1].sent - measured[0].sent) if len(measured) > 1 else 0.0
    figures = {
        "completion_ms": summary_ms(completion),
        "client_to_done_ms": summary_ms(client_done),
        "queue_wait_ms": summary_ms(queue_wait),
        "run_to_finish_ms": summary_ms(run_time),
        "http_response_ms": summary_ms(http),
        "send_lag_ms": summary_ms(lag),
    }
    failures = [item for item in measured if item.task_id is None]
    result: dict[str, Any] = {
        "mode": deployment.mode,
        "rate": args.rate,
        "duration_s": args.duration,
        "achieved_rate": round((len(measured) - 1) / sent_span, 2) if sent_span else None,
        "concurrency": args.concurrency,
        "submitted": len(measured),
        "accepted": len(accepted),
        "refused_or_failed": len(failures),
        "failures": dict(Counter(item.error or str(item.status) for item in failures)),
        "missing_in_db": missing,
        "not_done": not_done,
        **figures,
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
    # A request refused or timed out is reported, not a failure of the run: the run fails
    # when an accepted task is missing from the database or never got done.
    result["ok"] = reached and missing == 0 and not_done == 0 and bool(accepted)
    print_table(
        [
            ("mode", deployment.mode + ("" if deployment.embedded else " (api + one worker)")),
            (
                "load",
                f"{len(measured)} tasks at {args.rate:g}/s (achieved {result['achieved_rate']}/s)"
                f", worker concurrency {args.concurrency}",
            ),
            ("completion (finished - created)", fmt_summary(figures["completion_ms"])),
            ("client send -> finished", fmt_summary(figures["client_to_done_ms"])),
            ("queue wait (started - created)", fmt_summary(figures["queue_wait_ms"])),
            ("started -> finished", fmt_summary(figures["run_to_finish_ms"])),
            ("HTTP response", fmt_summary(figures["http_response_ms"])),
            ("send lag behind schedule", fmt_summary(figures["send_lag_ms"])),
            (
                "accepted / failed / missing / not done",
                f"{len(accepted)} / {len(failures)} / {missing} / {not_done}",
            ),
            ("PostgreSQL per task (whole run)", fmt_per_unit(db_work)),
            *closing_rows(cpu, meter.run_queue_wait, load_avg, machine, ok=result["ok"]),
        ]
    )
    return finish(BENCH, result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks per second")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds")
    parser.add_argument("--concurrency", type=int, default=8, help="the worker's concurrency")
    parser.add_argument("--connections", type=int, default=32, help="client connection pool")
    parser.add_argument("--timeout", type=float, default=120.0, help="most seconds to wait")
    parser.add_argument(
        "--profile-target", choices=("api", "worker"), default="worker", help="with --profile"
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
