"""deploy/prometheus: the configuration and the alert rules are valid for promtool,
every alert is well formed and unit-tested (firing and silent) in alerts_test.yml,
and the rules read only metrics Krolik exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.conftest import PROMETHEUS_DIR, promql_metric_names, summed_store_gauges

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"

EXPECTED_ALERTS = {
    "KrolikStuckTasks",
    "KrolikHighFailureRate",
    "KrolikBacklogGrowing",
    "KrolikOutboxLag",
    "KrolikDeadTasks",
    "KrolikDeadLetteredMessages",
    "KrolikNoConsumers",
    "KrolikRelayErrors",
    "KrolikApiDown",
    "KrolikWorkerDown",
}
SEVERITIES = {"warning", "critical"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def run_promtool(promtool: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


# -- promtool ---------------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", ALERTS.name, cwd=PROMETHEUS_DIR)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_accepts_the_configuration_with_its_rule_files(
    promtool: str, tmp_path: Path
) -> None:
    # rule_files are resolved relative to the configuration file: run it from elsewhere.
    output = run_promtool(promtool, "check", "config", str(CONFIG), cwd=tmp_path)
    assert "SUCCESS" in output
    assert "1 rule files found" in output


def test_alert_unit_tests_pass(promtool: str, tmp_path: Path) -> None:
    output = run_promtool(promtool, "test", "rules", str(ALERTS_TEST), cwd=tmp_path)
    assert "SUCCESS" in output


def test_promtool_notices_a_broken_alert(promtool: str, tmp_path: Path) -> None:
    """The checks above can fail: a rule file with a typo is refused."""
    broken = ALERTS.read_text(encoding="utf-8").replace(
        "max by (queue) (krolik_stuck_tasks) > 0", "max by (queue) (krolik_stuck_tasks > 0", 1
    )
    assert broken != ALERTS.read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0


# -- the rules themselves -----------------------------------------------------------------


def test_the_expected_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_has_severity_for_and_annotations(rule: dict[str, Any]) -> None:
    assert rule.get("labels", {}).get("severity") in SEVERITIES, "severity: warning|critical"
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), "no summary annotation"
    assert len(annotations.get("description", "").strip()) > 40, "no useful description"
    assert "for" in rule, "say how long the condition must hold, even `for: 0m`"
    assert duration_seconds(str(rule["for"])) <= 3600


def test_store_gauges_are_never_summed_across_api_replicas() -> None:
    for rule in alert_rules():
        summed = summed_store_gauges(rule["expr"])
        assert not summed, f"{rule['alert']}: sum() over {summed}; take max() across replicas"


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing >= EXPECTED_ALERTS, f"never shown firing: {sorted(EXPECTED_ALERTS - firing)}"
    assert silent >= EXPECTED_ALERTS, f"never shown silent: {sorted(EXPECTED_ALERTS - silent)}"
    assert load(ALERTS_TEST)["rule_files"] == [ALERTS.name]


def test_the_alerts_read_only_metrics_krolik_exports(krolik_metric_names: set[str]) -> None:
    used = {name for rule in alert_rules() for name in promql_metric_names(rule["expr"])}
    assert len(used) > 8, used
    assert used <= krolik_metric_names, f"not exported: {sorted(used - krolik_metric_names)}"


def test_the_unit_tests_feed_series_krolik_exports(krolik_metric_names: set[str]) -> None:
    used = set()
    for case in load(ALERTS_TEST)["tests"]:
        for series in case.get("input_series", []):
            used.add(re.match(r"\s*([A-Za-z_:][\w:]*)", series["series"]).group(1))
    assert used <= krolik_metric_names, f"not exported: {sorted(used - krolik_metric_names)}"


def test_promql_metric_names_extracts_selectors_only() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(krolik_http_request_duration_seconds"
        '_bucket{route!~"/health.*"}[$__rate_interval]))) / on () group_left '
        'max(krolik_tasks{status="pending", queue=~"$queue"} offset 5m) unless on (queue) up == 1 '
        'or absent(up{job="krolik-api"} == 1) > 1e3'
    )
    assert promql_metric_names(expr) == {
        "krolik_http_request_duration_seconds_bucket",
        "krolik_tasks",
        "up",
    }


@pytest.mark.parametrize(
    ("expr", "summed"),
    [
        ('sum by (queue) (krolik_tasks{status="pending"})', {"krolik_tasks"}),
        ("sum(krolik_outbox_lag_seconds) > 60", {"krolik_outbox_lag_seconds"}),
        ('sum(max by (queue) (krolik_tasks{status="pending"}))', set()),
        ("sum by (queue) (rate(krolik_tasks_failed_total[5m]))", set()),
        ("max by (queue) (krolik_stuck_tasks) > 0", set()),
        (
            'sum(rate(krolik_tasks_submitted_total{route=~"(a|b)"}[5m])) + sum(krolik_stuck_tasks)',
            {"krolik_stuck_tasks"},
        ),
    ],
)
def test_summed_store_gauges_sees_a_sum_over_replicas(expr: str, summed: set[str]) -> None:
    assert summed_store_gauges(expr) == summed
