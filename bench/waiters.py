#!/usr/bin/env python
"""Waiting for results: what held waiters cost one API process, and how soon they hear.

    .venv/bin/python bench/waiters.py                        # 5,000 waiters, 1,000 streams
    .venv/bin/python bench/waiters.py --waiters 2000 --streams 500 --rate 100
    .venv/bin/python bench/waiters.py --embedded             # krolik dev on SQLite

What it does, in one run (see bench/common.py for the deployment):
  * parks tasks that will not run for an hour (``delay_seconds``), one per waiter;
  * throughput, before any waiter: submit (``--connections`` clients POST one task each
    in a closed loop for ``--submit-seconds``) and drain (``--drain`` echo tasks taken
    in batches while the worker runs: tasks/s from the first start to the last finish
    the database recorded, and each process's CPU per task); the API's memory;
  * opens ``--waiters`` ``GET /tasks/{id}?wait=600`` and ``--streams`` ``GET
    /tasks/{id}/events`` on the parked tasks, all held open; the memory again;
  * the same throughput while they are held, and again after they closed: the ratios
    are held against the mean of before and after (the tables grow through the run,
    so every later phase is a little slower: measuring on both sides takes that out);
  * completion to answer: tasks submitted at ``--rate`` per second, each followed by a
    ``GET ?wait=30`` at once; answer time (client clock) minus ``finished_at`` (the
    database's clock, same machine) per task, p50 / p95 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import orjson
from common import (
    CpuMeter,
    Deployment,
    Profiler,
    add_common_args,
    finish,
    fmt_cpu,
    fmt_summary,
    print_table,
    run_main,
    say,
    summary_ms,
    to_epoch,
)

BENCH = "waiters"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def park(client: httpx.AsyncClient, url: str, count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        size = min(1000, count - len(ids))
        body = {"tasks": [{"payload": "parked", "delay_seconds": 3600}] * size}
        response = await client.post(f"{url}/tasks/batch", json=body)
        response.raise_for_status()
        ids += response.json()["task_ids"]
    return ids


class RawHttp:
    """One keep-alive HTTP/1.1 connection, each request written in one piece.

    httpx's AsyncClient, shared by many concurrent requests, was measured here at about
    a tenth of the rate of such connections against the same API (110 against 1,690
    POSTs/s, 32 at a time): the client, not Krolik, would be measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> RawHttp:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, Any]:
        head = f"{method} {target} HTTP/1.1\r\nHost: bench\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.decode().split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        payload = await self.reader.readexactly(length)
        return int(lines[0].split()[1]), orjson.loads(payload)

    def close(self) -> None:
        self.writer.close()


async def submit_rate(url: str, connections: int, seconds: float) -> float:
    """Tasks per second, ``connections`` clients each posting one task after another."""
    clients = [await RawHttp.open(url) for _ in range(connections)]
    stop = time.monotonic() + seconds
    done = 0

    async def one_client(client: RawHttp) -> None:
        nonlocal done
        while time.monotonic() < stop:
            status, _ = await client.request("POST", "/tasks/", b'{"payload": "x"}')
            done += status == 201

    started = time.monotonic()
    await asyncio.gather(*(one_client(client) for client in clients))
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    return done / elapsed


class Throughput(NamedTuple):
    submit: float
    """Tasks/s of single POSTs."""
    drain: float
    """Tasks/s of the worker's drain, by the database's timestamps."""
    cpu: dict[str, float]
    """CPU microseconds per drained task, by process."""


def phases(before: Throughput, held: Throughput, after: Throughput) -> list[tuple[str, Throughput]]:
    return [("before", before), ("held", held), ("after", after)]


def ratio(held: float, before: float, after: float) -> float | None:
    """Held against the mean of before and after: the tables grow through the run (and
    a young table has no statistics yet), so later phases run slower whatever is held;
    a measure on each side of the held one takes that drift out."""
    alone = (before + after) / 2
    return round(held / alone, 3) if alone else None


async def drain_rate(
    deployment: Deployment, url: str, tasks: int, after_id: int
) -> tuple[float, dict[str, float]]:
    """Tasks per second the running worker gets through ``tasks`` echo tasks submitted
    at once: first ``started_at`` to last ``finished_at`` of those tasks. It starts when
    the worker has run everything submitted after the parked tasks (up to ``after_id``).
    Also the CPU microseconds per task of each process during the drain."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        unfinished = await deployment.scalar(
            "SELECT count(*) AS n FROM krolik_tasks"
            f" WHERE id > {after_id} AND status IN ('pending', 'processing')"
        )
        if int(unfinished) == 0:
            break
        await asyncio.sleep(0.05)
    ids: list[int] = []
    meter = CpuMeter(deployment.roles)
    meter.start()
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as client:
        while len(ids) < tasks:
            size = min(1000, tasks - len(ids))
            body = {"tasks": [{"name": "echo", "payload": {"i": i}} for i in range(size)]}
            response = await client.post(f"{url}/tasks/batch", json=body)
            response.raise_for_status()
            ids += response.json()["task_ids"]
    first, last = min(ids), max(ids)
    span = f"id BETWEEN {first} AND {last} AND name = 'echo'"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ended = await deployment.scalar(
            f"SELECT count(*) AS n FROM krolik_tasks WHERE {span} AND status = 'done'"
        )
        if int(ended) >= len(ids):
            break
        await asyncio.sleep(0.05)
    wall = time.monotonic() - started
    cpu = {role: round(cores * wall / len(ids) * 1e6) for role, cores in meter.stop().items()}
    rows = await deployment.fetch(
        f"SELECT min(started_at) AS a, max(finished_at) AS b FROM krolik_tasks WHERE {span}"
    )
    began, ended_at = to_epoch(rows[0]["a"]), to_epoch(rows[0]["b"])
    if began is None or ended_at is None or ended_at <= began:
        return 0.0, cpu
    return len(ids) / (ended_at - began), cpu


async def hold(url: str, ids: list[int], waiters: int, streams: int) -> tuple[Any, list[Any]]:
    """Open the waits and streams; return the client and their tasks (cancel to close)."""
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(700, connect=30),
        limits=httpx.Limits(max_connections=waiters + streams + 10),
    )
    opened = 0

    async def wait_on(task_id: int) -> None:
        nonlocal opened
        opened += 1
        await client.get(f"{url}/tasks/{task_id}", params={"wait": 600})

    async def follow(task_id: int) -> None:
        nonlocal opened
        async with client.stream("GET", f"{url}/tasks/{task_id}/events") as stream:
            opened += 1
            async for _ in stream.aiter_lines():
                pass

    jobs = []
    for index, task_id in enumerate(ids[: waiters + streams]):
        jobs.append(asyncio.create_task(wait_on(task_id) if index < waiters else follow(task_id)))
        if index % 200 == 199:
            await asyncio.sleep(0.05)  # do not overrun the listen backlog
    deadline = time.monotonic() + 60
    while opened < len(jobs) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # the server registers the last ones
    return client, jobs


async def completion_to_answer(url: str, rate: float, seconds: float) -> list[tuple[int, float]]:
    """(task id, wall time the waiting client got its answer) per task: each task is
    submitted, then waited for on the same connection."""
    answers: list[tuple[int, float]] = []

    async def one() -> None:
        client = await RawHttp.open(url)
        try:
            _, created = await client.request("POST", "/tasks/", b'{"payload": "x"}')
            _, task = await client.request("GET", f"/tasks/{created['task_id']}?wait=30")
            if task["status"] == "done":
                answers.append((task["id"], time.time()))
        finally:
            client.close()

    jobs = []
    start = time.monotonic()
    for i in range(round(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.append(asyncio.create_task(one()))
    await asyncio.gather(*jobs)
    return answers


async def bench(args: argparse.Namespace) -> int:
    deployment = Deployment(BENCH, args)
    profiler = Profiler(args, BENCH, deployment.mode)
    deployment.extra["APP__RESULTS__MAX_WAIT_SECONDS"] = "600"
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    try:
        await deployment.set_up()
        api, url = await deployment.start_api(concurrency=args.concurrency)
        if not deployment.embedded:
            deployment.start_worker(args.concurrency)
        async with httpx.AsyncClient(timeout=60) as client:
            ids = await park(client, url, args.waiters + args.streams)
        await completion_to_answer(url, args.rate, 2)  # warm-up: worker up, paths warm
        parked = max(ids, default=0)

        async def throughput(phase: str) -> Throughput:
            say(BENCH, f"{phase}: submit for {args.submit_seconds:g}s, drain of {args.drain}")
            submit = await submit_rate(url, args.connections, args.submit_seconds)
            if phase == "held":
                profiler.start(api)
            drain, cpu = await drain_rate(deployment, url, args.drain, parked)
            if phase == "held":
                await profiler.stop()
            return Throughput(submit, drain, cpu)

        before = await throughput("before")
        rss_alone = rss_mib(api.pid)
        say(BENCH, f"opening {args.waiters} waits and {args.streams} streams")
        held, jobs = await hold(url, ids, args.waiters, args.streams)
        rss_held = rss_mib(api.pid)
        during = await throughput("held")
        say(BENCH, f"completion to answer at {args.rate:g}/s for {args.duration:g}s, held still")
        answers = await completion_to_answer(url, args.rate, args.duration)
        still_open = sum(not job.done() for job in jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await held.aclose()
        after = await throughput("after")
        rows = await deployment.fetch(
            "SELECT id, finished_at FROM krolik_tasks WHERE status = 'done'"
        )
        await deployment.stop_all()
    except BaseException:
        deployment.failed = True
        raise
    finally:
        await deployment.clean_up()
    finished = {row["id"]: to_epoch(row["finished_at"]) for row in rows}
    lags = [answered - finished[i] for i, answered in answers if finished.get(i) is not None]
    submit_ratio = ratio(during.submit, before.submit, after.submit)
    drain_ratio = ratio(during.drain, before.drain, after.drain)
    figures: dict[str, Any] = {
        "mode": deployment.mode,
        "waiters": args.waiters,
        "streams": args.streams,
        "held_open_at_end": still_open,
        "api_rss_mib_alone": round(rss_alone, 1),
        "api_rss_mib_held": round(rss_held, 1),
        "api_rss_mib_more": round(rss_held - rss_alone, 1),
        "submit_per_s": {name: round(t.submit, 1) for name, t in phases(before, during, after)},
        "submit_ratio_held_to_alone": submit_ratio,
        "drain_per_s": {name: round(t.drain, 1) for name, t in phases(before, during, after)},
        "drain_ratio_held_to_alone": drain_ratio,
        "drain_cpu_us_per_task": {name: t.cpu for name, t in phases(before, during, after)},
        "answered": len(answers),
        "completion_to_answer_ms": summary_ms(lags),
        "code": deployment.code,
    }
    figures["ok"] = bool(lags) and still_open == args.waiters + args.streams
    print_table(
        [
            ("mode", deployment.mode),
            (
                "held",
                f"{args.waiters} waits + {args.streams} event streams"
                f" ({still_open} open at the end)",
            ),
            (
                "API memory",
                f"{rss_alone:.0f} MiB alone, {rss_held:.0f} MiB held (+{rss_held - rss_alone:.0f})",
            ),
            (
                "submit",
                f"{before.submit:.0f}/s before, {during.submit:.0f}/s held,"
                f" {after.submit:.0f}/s after ({submit_ratio}x)",
            ),
            (
                "drain",
                f"{before.drain:.0f}/s before, {during.drain:.0f}/s held,"
                f" {after.drain:.0f}/s after ({drain_ratio}x)",
            ),
            *(
                (f"drain CPU {name} (us/task)", fmt_cpu(t.cpu))
                for name, t in phases(before, during, after)
            ),
            ("completion -> answer", fmt_summary(figures["completion_to_answer_ms"])),
        ]
    )
    return finish(BENCH, figures)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--waiters", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--drain", type=int, default=3000, help="echo tasks per drain measure")
    parser.add_argument("--rate", type=float, default=100.0, help="tasks/s of the latency phase")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the latency phase")
    parser.add_argument("--connections", type=int, default=32, help="submitting clients")
    parser.add_argument("--submit-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32, help="worker concurrency")
    args = parser.parse_args()
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
