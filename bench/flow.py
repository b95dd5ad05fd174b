#!/usr/bin/env python
"""Flow control: a cluster-wide cap kept and kept full, the cost of gates that do not
bind, and a rate limit over minutes.

    .venv/bin/python bench/flow.py                       # cap and drain scenarios
    .venv/bin/python bench/flow.py --scenario rate       # 60/minute for 10 minutes
    .venv/bin/python bench/flow.py --scenario fairness   # 10 of B among 10,000 of A
    .venv/bin/python bench/flow.py --scenario priority   # urgent tasks over a backlog
    .venv/bin/python bench/flow.py --embedded            # krolik dev on SQLite (drain only)

What it does (see bench/common.py for the deployment):
  * cap: ``--workers`` worker processes x ``--slots`` slots, the queue's ``max_running``
    set to ``--cap`` (``PATCH /queues/{name}``), ``--tasks`` tasks of
    ``bench.counted`` (bench/flow_handlers.py: each run counts itself in a counter all
    processes share and fails if it finds more than the cap running) sleeping
    ``--seconds`` each. The counter is sampled every 5 ms while tasks wait: the share of
    samples with the cap full is the cap's use (all of the cap's handlers inside their
    sleep at once); beside it, the share of the store's samples (about every 100 ms) with
    the cap's count of tasks ``processing``, the count the cap bounds. Every task must end
    done;
  * drain: ``--drain`` echo tasks through one worker, the queue without gates and then
    with every limit set but none binding (max_running and max_running_per_key 100,000,
    rate_limit 1,000,000/minute), ``--rounds`` times each, interleaved: the ratio;
  * fairness: ``max_running_per_key`` ``--per-key``; tenant A submits ``--tasks``
    tasks, then tenant B ``--small``: how many of A's start before B's last;
  * priority: no gates, ``--tasks`` tasks queued, then ``--urgent`` tasks of priority 5
    one every half second: how many of the backlog start between each one's submit and
    its start (the slots free one at a time: at best about one per slot);
  * rate: ``--rate`` ("60/minute") on the queue for ``--minutes``, a backlog larger than it
    can start; afterwards the starts the database recorded are checked in every sliding
    window of the limit's length (the most found in one window, against the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from common import (
    BENCH_DIR,
    CpuMeter,
    Deployment,
    add_common_args,
    finish,
    print_table,
    run_main,
    say,
    to_epoch,
)
from waiters import drain_rate, ratio

BENCH = "flow"
NOT_BINDING = {
    "max_running": 100_000,
    "max_running_per_key": 100_000,
    "rate_limit": "1000000/minute",
}
UNGATED = {"max_running": None, "max_running_per_key": None, "rate_limit": None}


async def set_limits(url: str, limits: dict[str, Any]) -> None:
    """On the queue tasks go to by default (the one ``GET /queues`` always lists)."""
    async with httpx.AsyncClient(timeout=30) as client:
        listed = await client.get(f"{url}/queues")
        listed.raise_for_status()
        queue = listed.json()[0]["queue"]
        response = await client.patch(f"{url}/queues/{queue}", json=limits)
        response.raise_for_status()


async def submit(url: str, bodies: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for first in range(0, len(bodies), 1000):
            response = await client.post(
                f"{url}/tasks/batch", json={"tasks": bodies[first : first + 1000]}
            )
            response.raise_for_status()
            ids += response.json()["task_ids"]
    return ids


def read_counter(path: Path) -> tuple[int, int]:
    try:
        now, most = (int(x) for x in path.read_text().split())
    except (FileNotFoundError, ValueError):
        return 0, 0
    return now, most


def spawn_counted_workers(deployment: Deployment, args: argparse.Namespace) -> None:
    """``--workers`` processes x ``--slots`` slots serving ``bench.counted``."""
    env = deployment.env(
        BENCH_FLOW_COUNTER=str(deployment.dir / "flow-counter"),
        PYTHONPATH=f"{BENCH_DIR}:{deployment.env()['PYTHONPATH']}",
    )
    for n in range(args.workers):
        deployment.spawn(
            f"worker{n}", "worker", "--app", "flow_handlers",
            "--concurrency", str(args.slots), env=env,
        )  # fmt: skip


async def start_order(deployment: Deployment) -> list[dict[str, Any]]:
    """Every task that started, in the order its claim committed."""
    return await deployment.fetch(
        "SELECT id, concurrency_key AS key, priority, created_at, started_at"
        " FROM krolik_tasks WHERE started_at IS NOT NULL ORDER BY started_at, id"
    )


async def cap_scenario(
    deployment: Deployment, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    counter = deployment.dir / "flow-counter"
    await set_limits(url, {"max_running": args.cap})
    spawn_counted_workers(deployment, args)
    await asyncio.sleep(3)  # the workers start
    body = {"name": "bench.counted", "payload": {"cap": args.cap, "seconds": args.seconds}}
    started = time.monotonic()
    ids = await submit(url, [body] * args.tasks)
    samples: list[int] = []
    stored: list[int] = []
    while True:
        [counts] = await deployment.fetch(
            "SELECT count(*) FILTER (WHERE status = 'pending') AS waiting,"
            " count(*) FILTER (WHERE status = 'processing') AS running"
            " FROM krolik_tasks WHERE name = 'bench.counted'"
        )
        if int(counts["waiting"]) == 0:
            break
        stored.append(int(counts["running"]))
        for _ in range(20):
            samples.append(read_counter(counter)[0])
            await asyncio.sleep(0.005)
    await deployment.wait_all_final(len(ids), timeout=120)
    seconds = time.monotonic() - started
    statuses = await deployment.status_counts()
    _, most = read_counter(counter)
    full = sum(1 for s in samples if s >= args.cap) / len(samples) if samples else 0.0
    store_full = sum(1 for s in stored if s >= args.cap) / len(stored) if stored else 0.0
    return {
        "tasks": len(ids),
        "cap": args.cap,
        "processes_x_slots": f"{args.workers}x{args.slots}",
        "most_running_seen": most,
        "cap_full_share": round(full, 3),
        "store_full_share": round(store_full, 3),
        "samples": len(samples),
        "seconds": round(seconds, 1),
        "statuses": statuses,
        "ideal_seconds": round(args.tasks * args.seconds / args.cap, 1),
    }


async def drain_scenario(
    deployment: Deployment, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    deployment.spawn("worker", "worker", "--concurrency", str(args.concurrency))
    await set_limits(url, UNGATED)  # not the cap scenario's, for the warm-up too
    await asyncio.sleep(2)
    newest = int(await deployment.scalar("SELECT coalesce(max(id), 0) AS n FROM krolik_tasks"))
    await drain_rate(deployment, url, 500, newest)  # warm-up
    rates: dict[str, list[float]] = {"ungated": [], "gated": []}
    cpu: dict[str, dict[str, list[float]]] = {"ungated": {}, "gated": {}}
    for _ in range(args.rounds):
        for kind, limits in (("ungated", UNGATED), ("gated", NOT_BINDING)):
            await set_limits(url, limits)
            newest = int(await deployment.scalar("SELECT max(id) AS n FROM krolik_tasks"))
            rate, cpu_us = await drain_rate(deployment, url, args.drain, newest)
            rates[kind].append(rate)
            for role, us in cpu_us.items():
                cpu[kind].setdefault(role, []).append(us)
            say(BENCH, f"drain {kind}: {rate:.0f} tasks/s; CPU µs per task {cpu_us}")
    mean = {kind: sum(values) / len(values) for kind, values in rates.items()}
    return {
        "drain_per_s": {kind: [round(v) for v in values] for kind, values in rates.items()},
        "gated_ratio": ratio(mean["gated"], mean["ungated"], mean["ungated"]),
        "cpu_us_per_task": {
            kind: {role: round(sum(v) / len(v)) for role, v in roles.items()}
            for kind, roles in cpu.items()
        },
    }


async def rate_scenario(
    deployment: Deployment, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    from krolik.flow import Rate

    rate = Rate.parse(args.rate)
    await set_limits(url, {"rate_limit": args.rate})
    deployment.spawn("worker", "worker", "--concurrency", "8")
    backlog = int(rate.amount * args.minutes * 60 / rate.window_seconds) + rate.amount
    await submit(url, [{"name": "echo", "payload": {"i": i}} for i in range(backlog)])
    await asyncio.sleep(args.minutes * 60)
    rows = await deployment.fetch(
        "SELECT started_at AS s FROM krolik_tasks WHERE started_at IS NOT NULL ORDER BY started_at"
    )
    starts = [to_epoch(row["s"]) or 0.0 for row in rows]
    most, j = 0, 0
    for i, begin in enumerate(starts):
        while j < len(starts) and starts[j] < begin + rate.window_seconds:
            j += 1
        most = max(most, j - i)
    return {
        "rate_limit": args.rate,
        "minutes": args.minutes,
        "starts": len(starts),
        "most_in_one_window": most,
        "limit": rate.amount,
        "expected_starts": round(rate.amount * args.minutes * 60 / rate.window_seconds),
    }


async def fairness_scenario(
    deployment: Deployment, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Tenant A submits ``--tasks`` tasks, then tenant B ``--small``; the queue has a
    ``max_running_per_key`` of ``--per-key``: how many of A's start before B's last."""
    await set_limits(url, {"max_running_per_key": args.per_key})
    spawn_counted_workers(deployment, args)
    await asyncio.sleep(3)  # the workers start
    payload = {"cap": 1_000_000, "seconds": args.seconds}
    big = {"name": "bench.counted", "payload": payload, "concurrency_key": "A"}
    small = {"name": "bench.counted", "payload": payload, "concurrency_key": "B"}
    await submit(url, [big] * args.tasks)
    await submit(url, [small] * args.small)
    await deployment.wait_all_final(args.tasks + args.small, timeout=args.tasks)
    order = [row["key"] for row in await start_order(deployment)]
    last_b = max(i for i, key in enumerate(order) if key == "B")
    return {
        "big": args.tasks,
        "small": args.small,
        "per_key": args.per_key,
        "processes_x_slots": f"{args.workers}x{args.slots}",
        "a_started_before_last_b": order[:last_b].count("A"),
        "b_positions": [i for i, key in enumerate(order) if key == "B"],
        "statuses": await deployment.status_counts(),
    }


async def priority_scenario(
    deployment: Deployment, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """No gates: a backlog of ``--tasks`` tasks of priority 0 whose messages are queued
    (and prefetched) first, then ``--urgent`` tasks of priority 5, one every half second:
    how many of the backlog start between each urgent task's submit and its start."""
    spawn_counted_workers(deployment, args)
    await asyncio.sleep(3)
    payload = {"cap": 1_000_000, "seconds": args.seconds}
    await submit(url, [{"name": "bench.counted", "payload": payload}] * args.tasks)
    await asyncio.sleep(1)
    urgent: list[int] = []
    for _ in range(args.urgent):
        urgent += await submit(url, [{"name": "bench.counted", "payload": payload, "priority": 5}])
        await asyncio.sleep(0.5)
    await deployment.wait_all_final(args.tasks + args.urgent, timeout=args.tasks)
    rows = await start_order(deployment)
    passed_by: list[int] = []
    waited_ms: list[float] = []
    for row in rows:
        if row["id"] in urgent:
            created, started = to_epoch(row["created_at"]) or 0, to_epoch(row["started_at"]) or 0
            passed_by.append(
                sum(
                    1
                    for other in rows
                    if other["priority"] == 0
                    and created < (to_epoch(other["started_at"]) or 0) < started
                )
            )
            waited_ms.append(round((started - created) * 1000, 1))
    return {
        "backlog": args.tasks,
        "urgent": args.urgent,
        "processes_x_slots": f"{args.workers}x{args.slots}",
        "backlog_started_in_between": passed_by,
        "most_in_between": max(passed_by),
        "waited_ms": waited_ms,
        "statuses": await deployment.status_counts(),
    }


async def bench(args: argparse.Namespace) -> int:
    deployment = Deployment(BENCH, args)
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    figures: dict[str, Any] = {"mode": deployment.mode, "code": deployment.code}
    meter = CpuMeter(deployment.roles)
    try:
        await deployment.set_up()
        figures["machine"] = await deployment.probe()
        _, url = await deployment.start_api()
        meter.start()
        if args.scenario == "rate":
            figures["rate"] = await rate_scenario(deployment, url, args)
        elif args.scenario == "fairness":
            figures["fairness"] = await fairness_scenario(deployment, url, args)
        elif args.scenario == "priority":
            figures["priority"] = await priority_scenario(deployment, url, args)
        else:
            if not args.embedded:
                figures["cap"] = await cap_scenario(deployment, url, args)
                await deployment.stop_all()
                _, url = await deployment.start_api()
            figures["drain"] = await drain_scenario(deployment, url, args)
        figures["cpu_cores"] = meter.stop()
        await deployment.stop_all()
    except BaseException:
        deployment.failed = True
        raise
    finally:
        await deployment.clean_up()
    rows: list[tuple[str, Any]] = []
    ok = True
    if "cap" in figures:
        cap = figures["cap"]
        ok = (
            ok
            and cap["most_running_seen"] <= cap["cap"]
            and cap["statuses"] == {"done": cap["tasks"]}
        )
        rows += [
            ("cap", f"{cap['cap']} over {cap['processes_x_slots']} slots, {cap['tasks']:,} tasks"),
            ("most running seen", f"{cap['most_running_seen']} (by the handlers)"),
            ("cap full while waiting", f"{cap['cap_full_share']:.1%} of {cap['samples']} samples"),
            ("the store's count at the cap", f"{cap['store_full_share']:.1%} of its samples"),
            ("took", f"{cap['seconds']}s (ideal {cap['ideal_seconds']}s); {cap['statuses']}"),
        ]
    if "drain" in figures:
        drain = figures["drain"]
        rows += [
            ("drain, no gates", f"{drain['drain_per_s']['ungated']} tasks/s"),
            ("drain, gates not binding", f"{drain['drain_per_s']['gated']} tasks/s"),
            ("ratio", f"{drain['gated_ratio']}x"),
        ]
    if "rate" in figures:
        rate = figures["rate"]
        ok = ok and rate["most_in_one_window"] <= rate["limit"]
        rows += [
            ("rate", f"{rate['rate_limit']} for {rate['minutes']} min: {rate['starts']} starts"
             f" (expected about {rate['expected_starts']})"),
            ("most in one window", f"{rate['most_in_one_window']} (limit {rate['limit']})"),
        ]  # fmt: skip
    if "fairness" in figures:
        fair = figures["fairness"]
        ok = ok and fair["statuses"] == {"done": fair["big"] + fair["small"]}
        rows += [
            ("fairness", f"A {fair['big']:,} then B {fair['small']}, {fair['per_key']} per key,"
             f" {fair['processes_x_slots']} slots"),
            ("A started before B's last", str(fair["a_started_before_last_b"])),
            ("B's places in the start order", str(fair["b_positions"])),
        ]  # fmt: skip
    if "priority" in figures:
        prio = figures["priority"]
        ok = ok and prio["statuses"] == {"done": prio["backlog"] + prio["urgent"]}
        rows += [
            ("priority", f"{prio['urgent']} urgent over {prio['backlog']:,} queued,"
             f" {prio['processes_x_slots']} slots"),
            ("backlog started in between", str(prio["backlog_started_in_between"])),
            ("urgent waited (ms)", str(prio["waited_ms"])),
        ]  # fmt: skip
    figures["ok"] = ok
    rows.append(("verdict", "OK" if ok else "FAILED"))
    print_table(rows)
    return finish(BENCH, figures)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument(
        "--scenario",
        choices=["cap", "rate", "fairness", "priority"],
        default="cap",
        help="cap: the cap and drain scenarios; rate: the rate limit;"
        " fairness: a key limit; priority: urgent tasks over a backlog",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (cap)")
    parser.add_argument("--slots", type=int, default=8, help="slots per worker (cap)")
    parser.add_argument("--cap", type=int, default=5, help="max_running (cap)")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks (cap)")
    parser.add_argument("--seconds", type=float, default=0.02, help="each task's sleep (cap)")
    parser.add_argument("--small", type=int, default=10, help="tenant B's tasks (fairness)")
    parser.add_argument("--per-key", type=int, default=5, help="max_running_per_key (fairness)")
    parser.add_argument("--urgent", type=int, default=10, help="urgent tasks (priority)")
    parser.add_argument("--drain", type=int, default=5000, help="echo tasks per drain measure")
    parser.add_argument("--rounds", type=int, default=3, help="drain measures of each kind")
    parser.add_argument("--concurrency", type=int, default=64, help="worker slots (drain)")
    parser.add_argument("--rate", default="60/minute", help="the rate limit (rate)")
    parser.add_argument("--minutes", type=float, default=10, help="how long (rate)")
    return run_main(BENCH, lambda: bench(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
