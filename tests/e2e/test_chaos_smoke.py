"""The chaos script in its small mode: every kind of chaos once, and nothing is lost.

Worker kills, an API kill, a RabbitMQ outage, a restart of the script's own
PostgreSQL server, one worker cut from PostgreSQL, and tasks that block their
worker's event loop for three leases. Typically 30-45 s; the 150 s cap only guards
against a hung run on a loaded machine.

Re-runs must be explained by the chaos: a kill of the worker that ran the earlier
run, or its database gone (the cut, the restart) while it held the lease. A task
claimed just before a handler blocked its worker's loop (its run not registered yet)
keeps its lease too: such a re-run fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import AMQP_URL, service_missing
from tests.e2e.conftest import REPO_ROOT
from tests.support.pg_server import PrivatePostgres

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TASKS = 60
SMOKE_ARGS = [
    "--tasks", str(TASKS),
    "--duration", "12",
    "--kill-interval", "1",
    "--pg-restart-at", "0.2",
    "--settle", "3",
    "--rabbit-outage", "2",
    "--rabbit-outage-at", "0.4",
    "--worker-pg-cut", "2",
    "--worker-pg-cut-at", "0.5",
    "--api-kill-at", "0.75",
    "--blocking-share", "0.05",
    "--timeout", "60",
]  # fmt: skip
RUN_SECONDS = 120  # within the test's 150 s, leaving time for the script's clean-up


@pytest.mark.timeout(150)
def test_chaos_smoke_run_loses_nothing(
    rabbitmq_available: None, capsys: pytest.CaptureFixture[str]
) -> None:
    if not PrivatePostgres.available():
        service_missing("the PostgreSQL binaries the chaos script runs its own server with")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
    env |= {"APP__RABBITMQ__URL": AMQP_URL}
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
        output, _ = proc.communicate(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script stops its server and processes
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"the chaos run did not finish within {RUN_SECONDS}s:\n{output}")
    json_lines = [line for line in output.splitlines() if line[:1] == "{"]
    assert json_lines, f"the chaos run printed no figures (exit {proc.returncode}):\n{output}"
    figures = json.loads(json_lines[-1])
    with capsys.disabled():  # in the test output even when it passes
        print(
            f"\nchaos smoke re-runs: {figures['runs_executed_twice']} tasks ran twice, "
            f"{figures['rerun_extra_runs']} extra runs: {figures['rerun_explained_by_kill']} "
            f"explained by a kill, {figures['rerun_explained_by_pg_cut']} by the worker's "
            f"PostgreSQL cut, {figures['rerun_explained_by_pg_restart']} by the PostgreSQL "
            f"restart, {figures['rerun_claimed_before_loop_stall']} claimed before a loop "
            f"stall, {figures['rerun_unexplained']} unexplained; loop-blocking "
            f"tasks: {figures['blocking_tasks']}, {figures['blocking_runs_executed_twice']} re-run"
        )
    assert figures["failures"] == [], output
    assert proc.returncode == 0, output
    assert figures["submitted"] == TASKS, output
    assert figures["done"] == TASKS, output
    assert figures["failed"] == 0, output
    assert figures["lost"] == figures["stuck"] == figures["finished_twice"] == 0, output
    assert figures["rerun_unexplained"] == 0, output
    assert figures["rerun_claimed_before_loop_stall"] == 0, output
    assert figures["rerun_extra_runs"] <= (
        figures["rerun_explained_by_kill"]
        + figures["rerun_explained_by_pg_cut"]
        + figures["rerun_explained_by_pg_restart"]
    ), output
    assert figures["blocking_tasks"] >= 1, output
    assert figures["blocking_done"] == figures["blocking_tasks"], output
    assert figures["blocking_rerun_unexplained"] == 0, output
    assert figures["worker_kills"] >= 3, output
    assert figures["api_kills"] == 1, output
    assert figures["rabbit_outages"] == 1, output
    assert figures["pg_restarts"] == 1, output
    assert figures["worker_pg_cuts"] == 1, output
    assert figures["unexpected_exits"] == 0, output
    assert figures["did_not_survive"] == [], output
    assert len(figures["survival_checks"]) == 2, output
