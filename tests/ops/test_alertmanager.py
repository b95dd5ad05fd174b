"""deploy/alertmanager: a configuration amtool accepts, routing every Krolik alert to
a receiver, critical ones repeated sooner, warnings held back while a critical alert
of the same name and queue fires."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.ops.conftest import PROMETHEUS_DIR

CONFIG = PROMETHEUS_DIR.parent / "alertmanager" / "alertmanager.yml"


def run_amtool(amtool: str, *args: str) -> str:
    result = subprocess.run(
        [amtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=CONFIG.parent
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"amtool {' '.join(args)} failed:\n{output}"
    return result.stdout


def alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    return loaded


def test_amtool_accepts_the_configuration(amtool: str) -> None:
    assert "SUCCESS" in run_amtool(amtool, "check-config", str(CONFIG))


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_reaches_a_configured_receiver(amtool: str, rule: dict[str, Any]) -> None:
    labels = [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}"]
    receiver = run_amtool(
        amtool, "config", "routes", "test", f"--config.file={CONFIG}", *labels, "queue=default"
    ).strip()
    assert receiver in {r["name"] for r in config()["receivers"]}


def test_critical_alerts_repeat_sooner_than_the_rest() -> None:
    route = config()["route"]
    [critical] = [r for r in route["routes"] if r["matchers"] == ['severity="critical"']]
    assert duration(critical["repeat_interval"]) < duration(route["repeat_interval"])


def test_a_critical_alert_holds_back_the_warning_of_the_same_name_and_queue() -> None:
    [rule] = config()["inhibit_rules"]
    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    assert set(rule["equal"]) == {"alertname", "queue"}
    severities = {r["labels"]["severity"] for r in alerts()}
    assert severities == {"critical", "warning"}, "the matchers name the severities in use"


def test_alerts_are_grouped_by_what_the_rules_label() -> None:
    grouped = set(config()["route"]["group_by"])
    assert "alertname" in grouped
    for rule in alerts():
        if "queue" in rule["expr"]:
            assert "queue" in grouped, rule["alert"]


def duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]]
