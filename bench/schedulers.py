#!/usr/bin/env python
"""Schedules with no leader: three schedulers, one killed -9 again and again, each tick once.

    .venv/bin/python bench/schedulers.py                  # 1,000 ticks (about 17 minutes)
    .venv/bin/python bench/schedulers.py --ticks 120 --kill-every 3
    .venv/bin/python bench/schedulers.py --embedded       # one krolik dev (SQLite)

What it does (see bench/common.py for the deployment):
  * starts ``--schedulers`` ``krolik scheduler --app schedule_handlers`` processes, each of
    which declares the handler's every-second schedule (``catch_up=all``, so a tick no
    scheduler made would show as missing, not be skipped);
  * every ``--kill-every`` seconds kills one of them (the next in turn) with SIGKILL and
    starts it again at once, until ``--ticks`` ticks have passed;
  * then counts, in the database, the tasks of each tick (``krolik_schedule_ticks`` and
    the tasks created by ``schedule:bench.tick``): every tick between the first and the
    last must have made exactly one task, none missing, none twice; and how late each
    task was made after its tick.
Embedded mode has one process (``krolik dev``, SQLite holds one writer): it is killed and
restarted the same way, which checks restarts, not concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

from common import (
    BENCH_DIR,
    CpuMeter,
    Deployment,
    add_common_args,
    finish,
    fmt_summary,
    print_table,
    run_main,
    say,
    summary_ms,
    to_epoch,
)

BENCH = "schedulers"
SCHEDULE = "bench.tick"


async def bench(args: argparse.Namespace) -> int:
    deployment = Deployment(BENCH, args)
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    env = deployment.env(
        PYTHONPATH=f"{BENCH_DIR}:{deployment.env()['PYTHONPATH']}",
        APP__SCHEDULER__POLL_SECONDS=str(args.poll),
    )
    kills = 0
    meter = CpuMeter(deployment.roles)
    try:
        await deployment.set_up()
        machine = await deployment.probe()
        count = 1 if deployment.embedded else args.schedulers

        def start(n: int) -> Any:
            if deployment.embedded:
                command = [
                    "dev",
                    "--app",
                    "schedule_handlers",
                    "--data",
                    str(deployment.sqlite_path),
                ]
                command += ["--port", str(8100 + n)]
            else:
                command = ["scheduler", "--app", "schedule_handlers"]
            return deployment.spawn(f"scheduler{n}", *command, env=env)

        procs = [start(n) for n in range(count)]
        # The kills start once the schedulers are up (the first tick made): on a loaded
        # box a scheduler killed before it ever ran would check nothing.
        first = "SELECT count(*) FROM krolik_schedule_ticks"
        deadline = time.monotonic() + 60
        while int(await deployment.scalar(first)) == 0:
            if time.monotonic() > deadline:
                raise SystemExit("no scheduler made a tick within 60 s")
            await asyncio.sleep(0.2)
        meter.start()
        started = time.time()
        say(BENCH, f"{count} scheduler(s); one killed -9 every {args.kill_every:g}s")
        victim = 0
        while time.time() - started < args.ticks:
            await asyncio.sleep(args.kill_every)
            procs[victim].send(signal.SIGKILL)
            await asyncio.to_thread(procs[victim].popen.wait)
            kills += 1
            procs[victim] = start(victim)
            victim = (victim + 1) % count
        await asyncio.sleep(3)  # the last ticks are made
        cpu = meter.stop()
        ticks = await deployment.fetch(
            "SELECT k.tick_at, k.task_id, t.created_at FROM krolik_schedule_ticks k"
            f" LEFT JOIN krolik_tasks t ON t.id = k.task_id WHERE k.schedule = '{SCHEDULE}'"
            " ORDER BY k.tick_at"
        )
        by_creator = await deployment.scalar(
            "SELECT count(*) AS n FROM krolik_tasks WHERE created_by = 'schedule:bench.tick'"
        )
        await deployment.stop_all()
    except BaseException:
        deployment.failed = True
        raise
    finally:
        await deployment.clean_up()
    stamps = [to_epoch(row["tick_at"]) for row in ticks]
    seconds = [round(stamp) for stamp in stamps if stamp is not None]
    # The first and last seconds may be cut by the start and the stop: count between.
    inner = seconds[1:-1]
    expected = list(range(inner[0], inner[-1] + 1)) if inner else []
    missing = sorted(set(expected) - set(inner))
    duplicates = len(inner) - len(set(inner))
    without_task = sum(1 for row in ticks if row["task_id"] is None)
    lateness = [
        to_epoch(row["created_at"]) - to_epoch(row["tick_at"])
        for row in ticks
        if row["created_at"] is not None
    ]
    figures: dict[str, Any] = {
        "mode": deployment.mode,
        "schedulers": 1 if deployment.embedded else args.schedulers,
        "kills": kills,
        "ticks": len(ticks),
        "tasks_made": int(by_creator),
        "missing_ticks": len(missing),
        "duplicate_ticks": duplicates,
        "ticks_without_task": without_task,
        "made_after_tick_ms": summary_ms(lateness, (50, 95, 99, 100)),
        "cpu_cores": cpu,
        "machine": machine,
        "code": deployment.code,
    }
    figures["ok"] = (
        len(ticks) >= args.ticks * 0.8
        and not missing
        and duplicates == 0
        and without_task == 0
        and int(by_creator) == len(ticks)
    )
    print_table(
        [
            ("mode", deployment.mode),
            ("schedulers", f"{figures['schedulers']}, {kills} kills -9 (each restarted at once)"),
            ("ticks recorded", f"{len(ticks)} (tasks made by the schedule: {by_creator})"),
            ("missing / twice / without task", f"{len(missing)} / {duplicates} / {without_task}"),
            ("task made after its tick", fmt_summary(figures["made_after_tick_ms"])),
            ("verdict", "OK" if figures["ok"] else "FAILED"),
        ]
    )
    return finish(BENCH, figures)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--ticks", type=int, default=1000, help="seconds (ticks) to run")
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--poll", type=float, default=1.0, help="APP__SCHEDULER__POLL_SECONDS")
    args = parser.parse_args()
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
