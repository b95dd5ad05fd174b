#!/usr/bin/env python
"""Drain rate: N no-op tasks already queued, ONE worker process starts and runs them all.

    .venv/bin/python bench/drain.py                          # 5,000 echo tasks, concurrency 64
    .venv/bin/python bench/drain.py --tasks 20000 --concurrency 128
    .venv/bin/python bench/drain.py --embedded               # krolik dev on SQLite

What it does (PostgreSQL + RabbitMQ)
  * a throwaway deployment (see bench/common.py);
  * one ``krolik api`` (relay inside) takes the N tasks by ``POST /tasks/batch`` (1,000
    per request; handler ``--handler``, builtin ``echo`` by default, payload ``{"i": n}``)
    and publishes them; once the outbox is empty the API is stopped and a passive declare
    must show N messages ready in the RabbitMQ queue;
  * then ONE ``krolik worker --concurrency C`` starts; the clock runs from its spawn until
    the database shows all N tasks ``done`` (polled every 20 ms);
  * reports tasks/s from that wall clock and from min(started_at)..max(finished_at) as
    the database recorded them (the processing rate, without the process's start-up),
    and checks every task: done, a result (for echo: equal to its payload), started_at
    and finished_at, attempts == 1.

Embedded (``--embedded``): the N tasks are written into a fresh SQLite file through
Krolik's own store (outbox rows included) before ``krolik dev`` starts; its relay
hands them to the in-process broker and its worker runs them, measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
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
    free_port,
    load_average,
    per_unit,
    print_table,
    run_main,
    say,
    to_epoch,
)

BENCH = "drain"
CHUNK = 1000


async def enqueue_over_http(url: str, tasks: int, handler: str) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for first in range(0, tasks, CHUNK):
            body = orjson.dumps(
                {
                    "tasks": [
                        {"name": handler, "payload": {"i": i}}
                        for i in range(first, min(first + CHUNK, tasks))
                    ]
                }
            )
            response = await client.post(
                f"{url}/tasks/batch", content=body, headers={"content-type": "application/json"}
            )
            if response.status_code != 201:
                raise RuntimeError(f"batch refused: {response.status_code} {response.text}")


async def enqueue_into_sqlite(deployment: Deployment, tasks: int, handler: str) -> None:
    """Through Krolik's own SQLite store, in this process, before ``krolik dev`` starts."""
    from krolik.store.records import NewTask
    from krolik.store.sqlite import SqliteTaskStore

    store = SqliteTaskStore(deployment.sqlite_path)
    await store.open()
    try:
        for first in range(0, tasks, CHUNK):
            await store.enqueue(
                [
                    NewTask(name=handler, queue="default", payload={"i": i})
                    for i in range(first, min(first + CHUNK, tasks))
                ]
            )
    finally:
        await store.close()


async def publish_first(deployment: Deployment, args: argparse.Namespace) -> int:
    """Tasks in, published by the API's relay, API stopped; the queue's depth."""
    api, url = await deployment.start_api(relay=True)
    await enqueue_over_http(url, args.tasks, args.handler)
    deadline = time.monotonic() + args.timeout
    depth: int | None = None
    while time.monotonic() < deadline:
        # The relay packs several tasks into a message: wait for an empty outbox and a
        # queue depth that no longer moves.
        backlog = int(await deployment.scalar("SELECT count(*) AS n FROM krolik_outbox"))
        seen, depth = depth, await deployment.queue_depth()
        if backlog == 0 and depth and depth == seen:
            break
        await asyncio.sleep(0.2)
    code = await api.stop()
    say(BENCH, f"API stopped (exit {code})")
    await asyncio.sleep(0.5)  # RabbitMQ's count settles after the connection closed
    depth = await deployment.queue_depth()
    return depth or 0


async def bench(args: argparse.Namespace) -> int:
    deployment = Deployment(BENCH, args)
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    profiler = Profiler(args, BENCH, deployment.mode)
    try:
        await deployment.set_up()
        machine = await deployment.probe()
        depth: int | None = None
        if deployment.embedded:
            await enqueue_into_sqlite(deployment, args.tasks, args.handler)
            say(BENCH, f"{args.tasks} tasks written to {deployment.sqlite_path}")
        else:
            depth = await publish_first(deployment, args)
            # The relay packs up to APP__RELAY__TASKS_PER_MESSAGE tasks into a message.
            say(BENCH, f"the queue holds {depth} messages for {args.tasks} tasks")
            if not depth or depth > args.tasks:
                raise RuntimeError(f"expected 1 to {args.tasks} messages, found {depth}")
        counters_before = await deployment.db_counters()
        load_avg = load_average()
        meter = CpuMeter(deployment.roles)
        meter.start()
        spawned = time.time()
        if deployment.embedded:
            port = str(free_port())
            worker = deployment.spawn(
                "dev", "dev", "--host", "127.0.0.1", "--port", port,
                "--data", str(deployment.sqlite_path), "--concurrency", str(args.concurrency),
            )  # fmt: skip
        else:
            worker = deployment.start_worker(args.concurrency)
        if args.profile:
            await asyncio.sleep(0.3)  # let the interpreter come up before py-spy attaches
            profiler.start(worker)
        say(BENCH, f"{worker.name} pid {worker.pid} started (concurrency {args.concurrency})")
        reached, seen_done = await deployment.wait_all_final(
            args.tasks, args.timeout, interval=0.02
        )
        cpu = meter.stop()
        profile = await profiler.stop()
        code = await worker.stop()
        db_work = per_unit(counters_before, await deployment.db_counters(), args.tasks)
        [check] = await deployment.fetch(
            f"""
            SELECT count(*) AS n,
                   SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END) AS done,
                   SUM(CASE WHEN result IS NULL THEN 1 ELSE 0 END) AS no_result,
                   SUM(CASE WHEN {"result <> payload" if args.handler == "echo" else "1 = 0"}
                            THEN 1 ELSE 0 END) AS wrong_result,
                   SUM(CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) AS no_started_at,
                   SUM(CASE WHEN finished_at IS NULL THEN 1 ELSE 0 END) AS no_finished_at,
                   SUM(CASE WHEN attempts <> 1 THEN 1 ELSE 0 END) AS not_one_attempt,
                   MIN(started_at) AS first_start, MAX(finished_at) AS last_finish
            FROM krolik_tasks
            """
        )
        counts = await deployment.status_counts()
    except BaseException:
        deployment.failed = True
        raise
    finally:
        await deployment.clean_up()

    first_start, last_finish = to_epoch(check["first_start"]), to_epoch(check["last_finish"])
    wall = seen_done - spawned
    span = (last_finish - first_start) if first_start and last_finish else None
    problems = {
        key: int(check[key] or 0)
        for key in (
            "no_result",
            "wrong_result",
            "no_started_at",
            "no_finished_at",
            "not_one_attempt",
        )
    }
    done = int(check["done"] or 0)
    result: dict[str, Any] = {
        "mode": deployment.mode,
        "tasks": args.tasks,
        "handler": args.handler,
        "concurrency": args.concurrency,
        "queue_depth_before": depth,
        "done": done,
        "wall_s": round(wall, 3),
        "wall_tasks_per_s": round(done / wall, 1) if wall > 0 else None,
        "db_span_s": round(span, 3) if span else None,
        "db_tasks_per_s": round(done / span, 1) if span else None,
        "startup_s": round(first_start - spawned, 3) if first_start else None,
        "tail_s": round(seen_done - last_finish, 3) if last_finish else None,
        "checks": problems,
        "status_counts": counts,
        "db_per_task": db_work,
        "worker_exit_code": code,
        "cpu_cores": cpu,
        "run_queue_wait": meter.run_queue_wait,
        "load_average_1m": load_avg,
        "machine": machine,
        "code": deployment.code,
        "nice": deployment.nice,
        "profile": profile,
    }
    result["ok"] = reached and done == args.tasks and not any(problems.values())
    print_table(
        [
            ("mode", deployment.mode),
            (
                "tasks",
                f"{args.tasks:,} x {args.handler}, one worker, concurrency {args.concurrency}",
            ),
            (
                "wall clock (spawn -> all done)",
                f"{wall:.2f}s = {result['wall_tasks_per_s'] or 0:,.0f} tasks/s",
            ),
            (
                "DB: first started_at -> last finished_at",
                f"{span or 0:.2f}s = {result['db_tasks_per_s'] or 0:,.0f} tasks/s",
            ),
            ("start-up (spawn -> first started_at)", f"{result['startup_s']}s"),
            ("checks (each must be 0)", problems),
            ("status counts", counts),
            ("PostgreSQL per task (the worker)", fmt_per_unit(db_work)),
            *closing_rows(cpu, meter.run_queue_wait, load_avg, machine, ok=result["ok"]),
        ]
    )
    return finish(BENCH, result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64, help="the worker's concurrency")
    parser.add_argument(
        "--handler", choices=("echo", "default"), default="echo", help="builtin no-op handler"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="most seconds to wait")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
