#!/usr/bin/env python
"""Retention under load: the cleaner deletes millions of old tasks while submit and drain go on.

    .venv/bin/python bench/retention.py                    # 2,000,000 finished tasks
    .venv/bin/python bench/retention.py --rows 200000 --rounds 1

What it does (PostgreSQL only; see bench/common.py for the deployment):
  * writes ``--rows`` tasks that finished 30 days ago (done, each with its attempt row),
    straight into the database, then VACUUM ANALYZE: a table as months of work leave it;
  * starts the API (relay inside) and a worker with retention off, and measures submit
    (``--connections`` clients POSTing one task each for ``--submit-seconds``) and drain
    (``--drain`` echo tasks) ``--rounds`` times: before;
  * starts a cleaner (a ``krolik worker`` of an empty queue, retention on, the default
    7 days for done tasks) and measures the same, again and again (``--during-pause``
    seconds apart), while it deletes the old tasks: during; then once it has finished:
    after. Ratios are during against the mean of before and after;
  * the cleaner pauses between full batches (``APP__RETENTION__BUSY_SHARE``, 0.1) and
    cancels a batch past ``APP__RETENTION__BATCH_SECONDS_LIMIT`` (0.05 s): cancelled
    batches are counted apart;
  * each cleaner batch's time (one DELETE statement with its cascade, the time its row
    locks are held: from the cleaner's own log), the tasks table's size and live and dead
    rows before, after the cleaning, after autovacuum came by (or, on a server with
    autovacuum off, a VACUUM by hand), and after as many new tasks again as the last
    phase wrote (space reused, not grown).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from common import (
    CpuMeter,
    Deployment,
    add_common_args,
    finish,
    fmt_summary,
    print_table,
    run_main,
    say,
    summary_ms,
)
from waiters import drain_rate, ratio, submit_rate

BENCH = "retention"

OLD_TASKS = """
INSERT INTO krolik_tasks (name, queue, payload, status, result, attempts, max_attempts,
    run_token, worker_id, run_at, created_at, updated_at, started_at, finished_at)
SELECT 'echo', 'default', jsonb_build_object('i', g), 'done', jsonb_build_object('i', g),
       1, 3, 1, 'bench-old', t, t, t, t, t
FROM generate_series(1, $1::int) AS g,
     LATERAL (SELECT now() - interval '30 days' + g * interval '1 millisecond' AS t) AS x
"""
OLD_ATTEMPTS = """
INSERT INTO krolik_attempts (task_id, run_token, attempt, worker_id, started_at, finished_at,
    outcome)
SELECT id, 1, 1, worker_id, started_at, finished_at, 'succeeded'
FROM krolik_tasks WHERE worker_id = 'bench-old'
"""
TABLE_STATE = """
SELECT pg_total_relation_size('krolik_tasks') AS total_bytes,
       pg_relation_size('krolik_tasks') AS heap_bytes,
       n_live_tup AS live, n_dead_tup AS dead, autovacuum_count AS autovacuums,
       last_autovacuum
FROM pg_stat_user_tables WHERE relname = 'krolik_tasks'
"""


async def table_state(conn: Any) -> dict[str, Any]:
    row = dict(await conn.fetchrow(TABLE_STATE))
    row["total_mib"] = round(row.pop("total_bytes") / 2**20, 1)
    row["heap_mib"] = round(row.pop("heap_bytes") / 2**20, 1)
    last = row.pop("last_autovacuum")
    row["last_autovacuum"] = last.isoformat() if last else None
    return row


def batch_seconds(log_text: str, event: str = "tasks_pruned") -> list[float]:
    """The cleaner's batches, from its JSON log lines (``tasks_pruned``, at DEBUG; those
    cancelled at their time limit: ``prune_batch_cancelled``)."""
    found = []
    for line in log_text.splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            found.append(float(orjson.loads(line)["seconds"]))
        except (orjson.JSONDecodeError, KeyError, ValueError):
            continue
    return found


async def bench(args: argparse.Namespace) -> int:
    import asyncpg  # type: ignore[import-untyped]

    if args.embedded:
        raise SystemExit("retention.py measures PostgreSQL (the cleaner's locks, autovacuum)")
    deployment = Deployment(BENCH, args)
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    phases: dict[str, list[tuple[float, float]]] = {"before": [], "during": [], "after": []}
    states: dict[str, dict[str, Any]] = {}
    cleaning_seconds = 0.0
    meter = CpuMeter(deployment.roles)
    try:
        await deployment.set_up()
        machine = await deployment.probe()
        conn = await asyncpg.connect(**deployment._pg_args(deployment.db_name))
        say(BENCH, f"writing {args.rows:,} tasks that finished 30 days ago")
        written = time.monotonic()
        await conn.execute(OLD_TASKS, args.rows, timeout=3600)
        await conn.execute(OLD_ATTEMPTS, timeout=3600)
        await conn.execute("VACUUM ANALYZE krolik_tasks", timeout=3600)
        await conn.execute("VACUUM ANALYZE krolik_attempts", timeout=3600)
        say(BENCH, f"written in {time.monotonic() - written:.0f}s")
        states["with old tasks"] = await table_state(conn)
        autovacuum = await conn.fetchval("SHOW autovacuum")
        quiet = deployment.env(APP__RETENTION__ENABLED="false")
        _, url = await deployment.start_api()
        deployment.spawn("worker", "worker", "--concurrency", str(args.concurrency), env=quiet)
        await submit_rate(url, 4, 1)  # warm-up
        newest = int(await conn.fetchval("SELECT max(id) FROM krolik_tasks"))

        async def measure(phase: str) -> None:
            submit = await submit_rate(url, args.connections, args.submit_seconds)
            drain, _ = await drain_rate(deployment, url, args.drain, newest)
            phases[phase].append((submit, drain))
            say(BENCH, f"{phase}: submit {submit:.0f}/s, drain {drain:.0f}/s")

        for _ in range(args.rounds):
            await measure("before")
        cleaner = deployment.spawn(
            "cleaner",
            "worker",
            "-q",
            f"{deployment.queue_name}_nothing",
            env=deployment.env(
                APP__RETENTION__ENABLED="true",
                APP__RETENTION__INTERVAL_SECONDS="1",
                APP__LOG_LEVEL="DEBUG",
                APP__SCHEDULER__ENABLED="false",
            ),
        )
        started = time.monotonic()
        meter.start()
        old = "SELECT count(*) FROM krolik_tasks WHERE worker_id = 'bench-old'"
        while int(await conn.fetchval(old)) > 0 or len(phases["during"]) < args.rounds:
            if int(await conn.fetchval(old)) == 0:
                cleaning_seconds = cleaning_seconds or time.monotonic() - started
            await measure("during")
            # Each measure writes tasks that stay (retention of done is 7 days): spaced
            # out, they leave the cleaner's work and the table's size to the old tasks.
            await asyncio.sleep(args.during_pause)
            if time.monotonic() - started > args.timeout:
                raise SystemExit("the cleaner did not finish in time")
        cleaning_seconds = cleaning_seconds or time.monotonic() - started
        cpu = meter.stop()
        states["cleaned"] = await table_state(conn)
        for _ in range(args.rounds):
            await measure("after")
        deadline = time.monotonic() + args.autovacuum_wait
        while time.monotonic() < deadline:
            state = await table_state(conn)
            if state["autovacuums"] > states["cleaned"]["autovacuums"]:
                break
            await asyncio.sleep(5)
        if autovacuum != "on":  # as autovacuum would have, so the reuse below shows
            say(BENCH, "autovacuum is off on this server: VACUUM krolik_tasks by hand")
            await conn.execute("VACUUM krolik_tasks", timeout=3600)
        states["after autovacuum"] = await table_state(conn)
        old_left = int(await conn.fetchval(old))
        tasks_after = int(await conn.fetchval("SELECT count(*) FROM krolik_tasks"))
        for _ in range(args.rounds):
            await measure("after")
        refill = int(await conn.fetchval("SELECT count(*) FROM krolik_tasks")) - tasks_after
        states["after new tasks"] = await table_state(conn)
        await conn.close()
        await deployment.stop_all()
        cleaner_log = cleaner.log_path.read_text()
        batches = batch_seconds(cleaner_log)
        cancelled = batch_seconds(cleaner_log, "prune_batch_cancelled")
    except BaseException:
        deployment.failed = True
        raise
    finally:
        await deployment.clean_up()

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    before = [mean([s for s, _ in phases["before"]]), mean([d for _, d in phases["before"]])]
    during = [mean([s for s, _ in phases["during"]]), mean([d for _, d in phases["during"]])]
    after = [mean([s for s, _ in phases["after"]]), mean([d for _, d in phases["after"]])]
    submit_ratio = ratio(during[0], before[0], after[0])
    drain_ratio = ratio(during[1], before[1], after[1])
    figures: dict[str, Any] = {
        "mode": deployment.mode,
        "rows": args.rows,
        "cleaning_seconds": round(cleaning_seconds, 1),
        "deleted_per_s": round(args.rows / cleaning_seconds) if cleaning_seconds else None,
        "batches": len(batches),
        "batch_ms": summary_ms(batches, (50, 95, 99, 99.9, 100)),
        "batches_over_100ms": sum(1 for seconds in batches + cancelled if seconds > 0.1),
        "batches_cancelled": len(cancelled),
        "cancelled_ms": summary_ms(cancelled, (50, 100)),
        "submit_per_s": {"before": before[0], "during": during[0], "after": after[0]},
        "drain_per_s": {"before": before[1], "during": during[1], "after": after[1]},
        "submit_ratio_during": submit_ratio,
        "drain_ratio_during": drain_ratio,
        "rounds_during": len(phases["during"]),
        "table": states,
        "new_tasks_after_cleaning": refill,
        "server_autovacuum": autovacuum,
        "cpu_cores": cpu,
        "machine": machine,
        "code": deployment.code,
    }
    figures["ok"] = bool(batches) and old_left == 0
    print_table(
        [
            ("old tasks", f"{args.rows:,} deleted in {cleaning_seconds:.0f}s"
             f" ({figures['deleted_per_s']}/s), {len(batches)} batches"),
            ("batch (locks held)", f"{fmt_summary(figures['batch_ms'])};"
             f" {figures['batches_over_100ms']} over 100 ms (cancelled ones too)"),
            ("batches cancelled", f"{len(cancelled)} at the time limit:"
             f" {fmt_summary(figures['cancelled_ms'])}"),
            ("submit", f"{before[0]:.0f}/s before, {during[0]:.0f}/s during,"
             f" {after[0]:.0f}/s after ({submit_ratio}x)"),
            ("drain", f"{before[1]:.0f}/s before, {during[1]:.0f}/s during,"
             f" {after[1]:.0f}/s after ({drain_ratio}x)"),
            *((f"krolik_tasks {name}", ", ".join(f"{k} {v}" for k, v in state.items()))
              for name, state in states.items()),
            ("verdict", "OK" if figures["ok"] else "FAILED"),
        ]
    )  # fmt: skip
    return finish(BENCH, figures)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--rows", type=int, default=2_000_000, help="old finished tasks")
    parser.add_argument("--rounds", type=int, default=2, help="measures before and after")
    parser.add_argument("--drain", type=int, default=3000, help="echo tasks per drain measure")
    parser.add_argument("--connections", type=int, default=32, help="submitting clients")
    parser.add_argument("--submit-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32, help="worker concurrency")
    parser.add_argument(
        "--during-pause", type=float, default=30, help="seconds between measures while cleaning"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="most seconds of cleaning")
    parser.add_argument(
        "--autovacuum-wait", type=float, default=120, help="seconds to wait for autovacuum"
    )
    args = parser.parse_args()
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
