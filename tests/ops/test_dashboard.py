"""deploy/grafana: the provisioned datasource and the Krolik dashboard.

The dashboard must load as Grafana JSON, use the provisioned datasource by uid
(no ``${DS_...}`` import placeholders), have a query behind every panel, query
only metrics Krolik exports (taken from a real scrape), parse as PromQL
(checked by promtool, with the dashboard variables filled in), and show what an
operator needs: throughput, latency percentiles, backlog, failures, stuck tasks,
the outbox, HTTP and dead letters.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.conftest import GRAFANA_DIR, promql_metric_names, summed_store_gauges

DASHBOARD = GRAFANA_DIR / "dashboards" / "krolik.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "krolik.yml"
# Grafana's own variables, and what to put in their place to check the PromQL.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "60000",
}


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def provisioned_prometheus() -> dict[str, Any]:
    sources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    (prometheus,) = [source for source in sources if source["type"] == "prometheus"]
    return prometheus


def panels() -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def query_panels() -> list[dict[str, Any]]:
    return [panel for panel in panels() if panel["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every panel query."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in query_panels()
        for target in panel["targets"]
    ]


def variables() -> list[dict[str, Any]]:
    return dashboard().get("templating", {}).get("list", [])


def datasource_refs(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def fill_variables(expr: str) -> str:
    """The expression with every $variable replaced by a value PromQL accepts."""
    user = {variable["name"]: ".*" for variable in variables()}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        assert name in user, f"${name} is not a variable of the dashboard"
        return user[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


# -- structure ---------------------------------------------------------------------------


def test_the_dashboard_is_grafana_json_with_a_stable_uid() -> None:
    data = dashboard()
    assert data["uid"] == "krolik-overview"
    assert data["title"]
    assert 36 <= data["schemaVersion"] <= 41
    assert "__inputs" not in data, "an export for sharing, not a provisioned dashboard"
    assert "id" not in data or data["id"] is None, "a fixed id clashes between Grafana instances"


def test_the_dashboard_uses_the_provisioned_datasource_by_uid() -> None:
    text = DASHBOARD.read_text(encoding="utf-8")
    assert "${DS_" not in text, "import placeholders do not resolve in a provisioned dashboard"
    uid = provisioned_prometheus()["uid"]
    refs = list(datasource_refs(dashboard()))
    assert refs, "no panel names a datasource"
    for ref in refs:
        assert ref == {"type": "prometheus", "uid": uid}, ref


def test_every_panel_has_queries_and_a_place_on_the_grid() -> None:
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in query_panels():
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refId"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty query"
        grid = panel["gridPos"]
        assert grid["w"] > 0
        assert grid["h"] > 0
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']}: wider than the dashboard"


def test_panels_do_not_overlap() -> None:
    boxes = [(panel["title"], panel["gridPos"]) for panel in panels()]
    for i, (title, a) in enumerate(boxes):
        for other, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"panels {title!r} and {other!r} overlap"


def test_the_dashboard_provider_and_datasource_provisioning() -> None:
    prometheus = provisioned_prometheus()
    assert prometheus["access"] == "proxy"
    assert prometheus["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


# -- content -------------------------------------------------------------------------------

REQUIRED_QUERIES = {
    "throughput (submitted)": r"rate\(krolik_tasks_submitted_total",
    "throughput (succeeded)": r"rate\(krolik_tasks_succeeded_total",
    "throughput (failed)": r"rate\(krolik_tasks_failed_total",
    "duration p50": r"histogram_quantile\(0\.5,.*krolik_task_duration_seconds_bucket",
    "duration p95": r"histogram_quantile\(0\.95,.*krolik_task_duration_seconds_bucket",
    "duration p99": r"histogram_quantile\(0\.99,.*krolik_task_duration_seconds_bucket",
    "queue wait p50": r"histogram_quantile\(0\.5,.*krolik_task_queue_wait_seconds_bucket",
    "queue wait p95": r"histogram_quantile\(0\.95,.*krolik_task_queue_wait_seconds_bucket",
    "queue wait p99": r"histogram_quantile\(0\.99,.*krolik_task_queue_wait_seconds_bucket",
    "backlog by status": r"by \(queue, status\) \(krolik_tasks\{",
    "oldest pending age": r"krolik_oldest_pending_age_seconds",
    "retries": r"rate\(krolik_tasks_retried_total",
    "stuck tasks": r"krolik_stuck_tasks",
    "outbox backlog": r"krolik_outbox_backlog",
    "outbox lag": r"krolik_outbox_lag_seconds",
    "relay errors": r"krolik_relay_publish_errors_total",
    "http by status": r"sum by \(status\) \(rate\(krolik_http_requests_total",
    "http p99": r"histogram_quantile\(0\.99,.*krolik_http_request_duration_seconds_bucket",
    "dead letters": r"krolik_messages_dead_lettered_total",
}


@pytest.mark.parametrize("what", sorted(REQUIRED_QUERIES))
def test_the_dashboard_shows(what: str) -> None:
    pattern = re.compile(REQUIRED_QUERIES[what])
    assert any(pattern.search(expr) for _, expr in queries()), f"no panel shows {what}"


def test_store_gauges_are_not_summed_across_api_replicas() -> None:
    for where, expr in queries():
        assert not summed_store_gauges(expr), f"{where}: take max() across API replicas"


def test_the_dashboard_queries_only_metrics_krolik_exports(krolik_metric_names: set[str]) -> None:
    used = {name for _, expr in queries() for name in promql_metric_names(expr)}
    for variable in variables():
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: unexpected query"
        used.add(match.group(1))
    assert len(used) > 15, used
    assert used <= krolik_metric_names, f"not exported: {sorted(used - krolik_metric_names)}"


def test_the_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each query, variables filled in, as a recording rule: promtool parses them all."""
    rules = [
        {"record": f"krolik_dashboard:query_{i}", "expr": fill_variables(expr)}
        for i, (_, expr) in enumerate(queries())
    ]
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(rules)} rules found" in output
