"""The chaos script in its small mode: kills and a RabbitMQ outage, and nothing is lost.

Typically 25-35 s; the 90 s cap only guards against a hung run on a loaded machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import AMQP_URL, pg_url
from tests.e2e.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

SMOKE_ARGS = [
    "--tasks", "60",
    "--duration", "6",
    "--kill-interval", "1",
    "--rabbit-outage", "2",
    "--timeout", "30",
]  # fmt: skip


@pytest.mark.timeout(150)
def test_chaos_smoke_run_loses_nothing(pg_database: str, rabbitmq_available: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
    env |= {"APP__DB__URL": pg_url("postgres"), "APP__RABBITMQ__URL": AMQP_URL}
    proc = subprocess.Popen(
        [sys.executable, "bench/chaos.py", *SMOKE_ARGS],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script cleans up its database and processes
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"the chaos run did not finish within 90s:\n{output}")
    assert proc.returncode == 0, output
    figures = json.loads(next(line for line in reversed(output.splitlines()) if line[:1] == "{"))
    assert figures["submitted"] == 60, output
    assert figures["done"] + figures["failed"] == 60, output
    assert figures["lost"] == figures["stuck"] == figures["finished_twice"] == 0, output
    assert figures["worker_kills"] >= 3, output
    assert figures["api_kills"] == 1, output
    assert figures["rabbit_outages"] == 1, output
