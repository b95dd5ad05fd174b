#!/usr/bin/env python
"""Webhooks: how soon a delivery arrives after its task ended, and that none is lost when
the receiver dies in the middle of a run.

    .venv/bin/python bench/webhooks.py                          # 100/s for 10 s, then 10,000
    .venv/bin/python bench/webhooks.py --tasks 2000 --rate 50
    .venv/bin/python bench/webhooks.py --embedded               # krolik dev on SQLite

What it does, in one run (see bench/common.py for the deployment):
  * a receiver process on 127.0.0.1 writes down every call it gets (path, delivery id,
    task id, arrival time, whether the signature verifies) and answers 200;
  * latency: after ``--warmup`` seconds of the same, not counted, tasks that name a
    webhook, submitted at ``--rate`` per second for ``--duration``; arrival (receiver
    clock) minus ``finished_at`` (the database's clock, same machine), p50 / p95 / p99;
  * volume: ``--tasks`` tasks, each with a URL of its own, submitted in batches; once
    ``--kill-at`` of them have arrived the receiver is killed -9 and started again after
    ``--down-seconds``. Then every task must have been delivered (the store says so), each
    call to its own task's URL, with a valid signature; repeats (at least once) are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from common import (
    CpuMeter,
    Deployment,
    add_common_args,
    closing_rows,
    finish,
    fmt_summary,
    load_average,
    print_table,
    run_main,
    say,
    summary_ms,
    to_epoch,
)

BENCH = "webhooks"
KEY_ID = "bench"
SECRET = "bench-webhook-secret"


# -- the receiver (a process of its own, so it can be killed) ---------------------------
def receive(port: int, out: Path) -> None:
    import uvicorn

    from krolik.webhooks import DELIVERY_HEADER, WebhookSignatureError, verify

    sink = out.open("ab", buffering=0)

    async def app(scope: Any, receive_message: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":  # the readiness probe
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive_message()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived = time.time()
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            verify(body, headers, {KEY_ID: SECRET})
            valid = True
        except WebhookSignatureError:
            valid = False
        task = orjson.loads(body)["task"]
        line = {
            "path": scope["path"],
            "delivery": headers.get(DELIVERY_HEADER.lower()),
            "task_id": task["id"],
            "at": arrived,
            "valid": valid,
        }
        sink.write(orjson.dumps(line) + b"\n")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


class Receiver:
    def __init__(self, port: int, out: Path, log: Path) -> None:
        self.port, self.out, self.log = port, out, log
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--receive", str(self.port), str(self.out)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    await client.get(self.url("/ready"))
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        raise RuntimeError(f"the receiver did not start; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def calls(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        lines = self.out.read_bytes().splitlines()
        return [orjson.loads(line) for line in lines if line.strip()]


# -- the phases -------------------------------------------------------------------------
async def latency_phase(
    url: str, receiver: Receiver, rate: float, seconds: float, prefix: str = "/latency"
) -> list[int]:
    ids: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        began = time.monotonic()
        count = int(rate * seconds)
        for n in range(count):
            pause = began + n / rate - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            body = {"payload": n, "webhook_url": receiver.url(f"{prefix}/{n}")}
            response = await client.post(f"{url}/tasks/", json=body)
            response.raise_for_status()
            ids.append(response.json()["task_id"])
    return ids


async def volume_phase(url: str, receiver: Receiver, tasks: int) -> dict[int, str]:
    expected: dict[int, str] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for start in range(0, tasks, 1000):
            paths = [f"/volume/{n}" for n in range(start, min(start + 1000, tasks))]
            body = {"tasks": [{"payload": p, "webhook_url": receiver.url(p)} for p in paths]}
            response = await client.post(f"{url}/tasks/batch", json=body)
            response.raise_for_status()
            expected.update(zip(response.json()["task_ids"], paths, strict=True))
    return expected


async def wait_calls(receiver: Receiver, task_ids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not task_ids <= {call["task_id"] for call in receiver.calls()}:
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace) -> int:
    deployment = Deployment(BENCH, args)
    deployment.extra |= {
        "APP__WEBHOOKS__ALLOWED_HOSTS": '["127.0.0.1/32"]',
        "APP__WEBHOOKS__SIGNING_KEYS": orjson.dumps({KEY_ID: SECRET}).decode(),
        "APP__WEBHOOKS__TIMEOUT_SECONDS": "2",
        # The receiver is down for seconds, not hours: tries come back within 2 s.
        "APP__WEBHOOKS__BACKOFF_MAX_SECONDS": "2",
    }
    say(BENCH, f"run {deployment.run}: {deployment.describe()}")
    receiver = Receiver(
        args.receiver_port, deployment.dir / "calls.jsonl", deployment.dir / "receiver.log"
    )
    try:
        await deployment.set_up()
        machine = await deployment.probe()
        load_avg = load_average()
        await receiver.start()
        _, url = await deployment.start_api(concurrency=args.concurrency)
        if not deployment.embedded:
            deployment.start_worker(args.concurrency)
        # Warm-up: the worker consuming, every path's connections open; not counted.
        warm = await latency_phase(url, receiver, args.rate, args.warmup, prefix="/warm")
        await wait_calls(receiver, set(warm), 60)
        meter = CpuMeter(deployment.roles)
        meter.start()
        say(BENCH, f"latency: {args.rate:g} tasks/s for {args.duration:g}s")
        latency_ids = await latency_phase(url, receiver, args.rate, args.duration)
        await wait_calls(receiver, set(latency_ids), 60)
        say(BENCH, f"volume: {args.tasks} tasks, the receiver killed at {args.kill_at:.0%}")
        began = time.monotonic()
        expected = await volume_phase(url, receiver, args.tasks)
        arrived_before = len(receiver.calls())
        kill_after = arrived_before + int(args.tasks * args.kill_at)
        while len(receiver.calls()) < kill_after and time.monotonic() - began < args.timeout:
            await asyncio.sleep(0.05)
        receiver.kill()
        killed_with = len(receiver.calls()) - arrived_before
        await asyncio.sleep(args.down_seconds)
        await receiver.start()
        await wait_calls(receiver, set(expected), args.timeout)
        all_in = time.monotonic() - began
        cpu = meter.stop()
        delivered_rows = await deployment.fetch(
            "SELECT task_id FROM krolik_deliveries WHERE state = 'delivered'"
        )
        finished_rows = await deployment.fetch("SELECT id, finished_at FROM krolik_tasks")
        await deployment.stop_all()
        calls = receiver.calls()  # before clean_up removes the run's folder
    except BaseException:
        deployment.failed = True
        raise
    finally:
        receiver.kill()
        await deployment.clean_up()
    finished = {row["id"]: to_epoch(row["finished_at"]) for row in finished_rows}
    first_arrival: dict[int, float] = {}
    for call in calls:
        first_arrival.setdefault(call["task_id"], call["at"])
    lags = [
        first_arrival[i] - finished[i]
        for i in latency_ids
        if i in first_arrival and finished.get(i) is not None
    ]
    volume_calls = [call for call in calls if call["task_id"] in expected]
    wrong_url = sum(call["path"] != expected[call["task_id"]] for call in volume_calls)
    invalid = sum(not call["valid"] for call in calls)
    received = {call["task_id"] for call in volume_calls}
    recorded = {row["task_id"] for row in delivered_rows} & set(expected)
    repeats = len(volume_calls) - len(received)
    figures: dict[str, Any] = {
        "mode": deployment.mode,
        "latency_tasks": len(latency_ids),
        "completion_to_delivery_ms": summary_ms(lags),
        "volume_tasks": args.tasks,
        "received_before_kill": killed_with,
        "receiver_down_s": args.down_seconds,
        "volume_received": len(received),
        "volume_recorded_delivered": len(recorded),
        "volume_missing": args.tasks - len(received),
        "volume_repeats": repeats,
        "wrong_url": wrong_url,
        "invalid_signatures": invalid,
        "volume_seconds": round(all_in, 2),
        "cpu_cores": cpu,
        "run_queue_wait": meter.run_queue_wait,
        "load_average_1m": load_avg,
        "machine": machine,
        "code": deployment.code,
    }
    figures["ok"] = (
        len(lags) == len(latency_ids)
        and len(received) == args.tasks
        and len(recorded) == args.tasks
        and wrong_url == 0
        and invalid == 0
    )
    print_table(
        [
            ("mode", deployment.mode),
            (
                "completion -> delivery",
                f"{fmt_summary(figures['completion_to_delivery_ms'])}"
                f" ({len(lags)} of {len(latency_ids)} at {args.rate:g}/s)",
            ),
            (
                "volume",
                f"{len(received)} of {args.tasks} received, {len(recorded)} recorded delivered,"
                f" {repeats} repeats, in {all_in:.1f}s",
            ),
            (
                "receiver killed",
                f"after {killed_with} calls, down {args.down_seconds:g}s",
            ),
            ("wrong URL / bad signature", f"{wrong_url} / {invalid}"),
            *closing_rows(cpu, meter.run_queue_wait, load_avg, machine, ok=figures["ok"]),
        ]
    )
    return finish(BENCH, figures)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--receive":
        receive(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks/s of the latency phase")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the latency phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, not counted")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks of the volume phase")
    parser.add_argument("--kill-at", type=float, default=0.3, help="share received, then kill")
    parser.add_argument("--down-seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32, help="worker concurrency")
    parser.add_argument("--timeout", type=float, default=300.0, help="for the volume phase")
    parser.add_argument("--receiver-port", type=int, default=0, help="default: a free one")
    args = parser.parse_args()
    if not args.receiver_port:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.receiver_port = probe.getsockname()[1]
    return run_main(BENCH, lambda: bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
