"""Smoke runs of the benchmarks in bench/: tiny sizes, each must exit 0 and end with its
JSON line. Nothing here asserts a speed; bench/README.md has the figures.

All runs start at once, at the first test that needs them, and each test checks one of
them: together they take about as long as the slowest (typically 15-30 s on 2 cores).
The wrk-based run is skipped where wrk is not installed; runs on PostgreSQL + RabbitMQ
are skipped (failed under CI) where those are not reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AMQP_URL, pg_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 110.0
HAS_WRK = shutil.which("wrk") is not None

# name -> (script, arguments, the keys its JSON line must have)
RUNS: dict[str, tuple[str, list[str], set[str]]] = {
    "submit_single": (
        "submit_single.py",
        ["--duration", "2", "--warmup", "1", "--connections", "16"],
        {"requests_per_s", "p50_ms", "p90_ms", "p99_ms", "ok_2xx", "non_2xx", "lost_writes"},
    ),
    "submit_batch": (
        "submit_batch.py",
        ["--duration", "2", "--warmup", "0.5", "--batch", "100", "--connections", "2"],
        {"tasks_per_s", "requests_per_s", "request_latency_ms", "lost_writes"},
    ),
    "drain": (
        "drain.py",
        ["--tasks", "100", "--concurrency", "8", "--timeout", "60"],
        {"wall_tasks_per_s", "db_tasks_per_s", "done", "checks", "startup_s"},
    ),
    "latency": (
        "latency.py",
        ["--rate", "20", "--duration", "2", "--warmup", "0.5", "--timeout", "60"],
        {"completion_ms", "client_to_done_ms", "queue_wait_ms", "http_response_ms"},
    ),
    "webhooks": (
        "webhooks.py",
        ["--tasks", "200", "--rate", "20", "--duration", "1", "--down-seconds", "0.5"],
        {"completion_to_delivery_ms", "volume_received", "wrong_url", "invalid_signatures"},
    ),
    "schedulers": (
        "schedulers.py",
        ["--ticks", "10", "--kill-every", "4", "--schedulers", "2"],
        {"ticks", "kills", "missing_ticks", "duplicate_ticks", "made_after_tick_ms"},
    ),
    "retention": (
        "retention.py",
        [
            "--rows",
            "2000",
            "--rounds",
            "1",
            "--drain",
            "200",
            "--submit-seconds",
            "1",
            "--autovacuum-wait",
            "0",
            "--during-pause",
            "0",
        ],
        {"cleaning_seconds", "batch_ms", "submit_ratio_during", "drain_ratio_during", "table"},
    ),
    "flow": (
        "flow.py",
        [
            "--tasks",
            "60",
            "--workers",
            "2",
            "--slots",
            "4",
            "--cap",
            "2",
            "--seconds",
            "0.01",
            "--drain",
            "100",
            "--rounds",
            "1",
            "--concurrency",
            "8",
        ],
        {"cap", "drain"},
    ),
}
COMMON_KEYS = {"bench", "mode", "ok", "cpu_cores", "machine"}
# Every script on PostgreSQL + RabbitMQ; the two the README also runs embedded, embedded.
CASES = [(name, False) for name in RUNS] + [("submit_single", True), ("drain", True)]


def _services_reachable() -> bool:
    import socket
    from urllib.parse import urlsplit

    amqp = urlsplit(AMQP_URL)
    pg = urlsplit(pg_url("postgres").replace("postgresql+asyncpg", "postgresql"))
    for host, port in ((pg.hostname, pg.port or 5432), (amqp.hostname, amqp.port or 5672)):
        try:
            socket.create_connection((host or "127.0.0.1", port), timeout=2).close()
        except OSError:
            return False
    return True


@dataclass
class Run:
    name: str
    embedded: bool
    proc: subprocess.Popen[str] | None
    output: str = ""

    def result(self) -> tuple[int | None, str]:
        if self.proc is None:
            return None, ""
        if self.proc.returncode is None:
            try:
                self.output, _ = self.proc.communicate(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # the script cleans up after itself
                try:
                    self.output, _ = self.proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.output, _ = self.proc.communicate()
                return None, self.output
        return self.proc.returncode, self.output


@pytest.fixture(scope="module")
def smoke_runs() -> Iterator[dict[tuple[str, bool], Run]]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
    env |= {"APP__DB__URL": pg_url("postgres"), "APP__RABBITMQ__URL": AMQP_URL}
    services = _services_reachable()
    runs: dict[tuple[str, bool], Run] = {}
    for name, embedded in CASES:
        script, args, _ = RUNS[name]
        wanted = (embedded or services) and (name != "submit_single" or HAS_WRK)
        proc = (
            subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "bench" / script), *args]
                + (["--embedded"] if embedded else []),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            if wanted
            else None
        )
        runs[(name, embedded)] = Run(name, embedded, proc)
    started = time.monotonic()
    try:
        yield runs
    finally:
        for run in runs.values():
            if run.proc is not None and run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
        for run in runs.values():
            run.result()
        print(f"bench smoke runs took {time.monotonic() - started:.1f}s")


def last_json_line(output: str) -> dict[str, Any]:
    line = next((ln for ln in reversed(output.splitlines()) if ln.startswith("{")), None)
    assert line is not None, f"no JSON line in the output:\n{output}"
    figures: dict[str, Any] = json.loads(line)
    assert output.rstrip().endswith(line), "the JSON line must be the last line"
    return figures


@pytest.mark.parametrize(
    ("name", "embedded"), CASES, ids=[f"{n}-{'embedded' if e else 'postgres'}" for n, e in CASES]
)
def test_bench_smoke(
    request: pytest.FixtureRequest,
    smoke_runs: dict[tuple[str, bool], Run],
    name: str,
    embedded: bool,
) -> None:
    if name == "submit_single" and not HAS_WRK:
        pytest.skip("wrk is not installed")
    if not embedded:
        request.getfixturevalue("pg_database")  # skips (fails under CI) without PostgreSQL
        request.getfixturevalue("rabbitmq_available")
    run = smoke_runs[(name, embedded)]
    code, output = run.result()
    assert code == 0, f"bench/{RUNS[name][0]} exited {code}:\n{output}"
    figures = last_json_line(output)
    assert figures["bench"] == name
    assert figures["mode"] == ("embedded" if embedded else "postgres")
    assert figures["ok"] is True
    missing = (COMMON_KEYS | RUNS[name][2]) - figures.keys()
    assert not missing, f"missing keys {missing} in {figures}"
