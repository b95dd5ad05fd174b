"""With PROMETHEUS_MULTIPROC_DIR set, processes serving one port report one sum."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

COUNT = """
from krolik.metrics import Metrics
metrics = Metrics()
metrics.submitted.labels("echo", "default").inc({n})
metrics.published.inc({n})
"""

SCRAPE = """
import sys
from krolik.metrics import Metrics
sys.stdout.write(Metrics().exposition().decode())
"""


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_counters_of_several_processes_are_summed(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    _python(COUNT.format(n=2), env)
    _python(COUNT.format(n=3), env)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_python(SCRAPE, env))
        for sample in family.samples
    }
    submitted = ("krolik_tasks_submitted_total", (("name", "echo"), ("queue", "default")))
    assert samples[submitted] == 5
    assert samples[("krolik_relay_published_total", ())] == 5


def test_without_the_directory_each_process_counts_alone(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    _python(COUNT.format(n=2), env)
    text = _python(SCRAPE, env)
    assert "krolik_relay_published_total 0.0" in text
    assert not list(tmp_path.iterdir())
