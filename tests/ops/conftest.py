"""Fixtures for the operations tests: metrics scraped from the real app and worker,
and the paths of the monitoring files.

The ``settings`` fixture is overridden here so the API reads its store gauges
afresh at every scrape (``refresh_seconds=0``): the tests poll /metrics until a
gauge moves, which a 5-second cache would hide.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from krolik.settings import Settings
from tests.conftest import test_settings
from tests.support.waiting import Condition, wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings(pg_database: str, rabbitmq_available: None, run_id: str) -> Settings:
    return test_settings(pg_database, run_id, metrics={"refresh_seconds": 0})


@pytest.fixture
def make_settings(
    pg_database: str, rabbitmq_available: None, run_id: str
) -> Callable[..., Settings]:
    """Settings on the same database and RabbitMQ names as ``settings``, with overrides."""

    def factory(**overrides: Any) -> Settings:
        overrides.setdefault("metrics", {"refresh_seconds": 0})
        return test_settings(pg_database, run_id, **overrides)

    return factory


def tool_or_skip(name: str, package: str) -> str:
    """A checking tool, not a service: without it, its tests are skipped (even in CI)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not on PATH (install it, e.g. the Debian package `{package}`, "
            "to check the monitoring configuration)"
        )
    return path


@pytest.fixture
def promtool() -> str:
    return tool_or_skip("promtool", "prometheus")


@pytest.fixture
def amtool() -> str:
    return tool_or_skip("amtool", "prometheus-alertmanager")


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """A sample's value, or None when the exposition does not have it."""
    return samples.get((name, frozenset((labels or {}).items())))


def exported_names(text: str) -> set[str]:
    """Every series name the exposition declares, with or without samples yet
    (a labelled counter has none before its first increment)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "untyped": ("",),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


async def scrape(client: httpx.AsyncClient, path: str = "/metrics") -> Samples:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_samples(response.text)


# --- PromQL: the metric names an expression reads ------------------------------------

PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (regex-based, enough for our files):
    strings, label matchers, grouping clauses, ranges and function calls are skipped."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries, $__rate_interval
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", text[match.end() :]):  # a function call
            continue
        names.add(word)
    return names


STORE_GAUGES = (
    "krolik_tasks",
    "krolik_tasks_finished_last_hour",
    "krolik_oldest_pending_age_seconds",
    "krolik_stuck_tasks",
    "krolik_outbox_backlog",
    "krolik_outbox_lag_seconds",
)
_AGGREGATION = re.compile(
    r"\b(sum|max|min|avg|count|group|topk|bottomk|quantile|stddev|stdvar|count_values)\s*"
    r"(?:(?:by|without)\s*\([^)]*\)\s*)?\($"
)


def summed_store_gauges(expr: str) -> set[str]:
    """Store gauges that reach a sum() directly. Every API replica exports the same
    gauge values, so they must be combined with max() (or min, avg...) first."""
    text = re.sub(r"\{[^}]*\}", "", _STRING.sub('""', expr))
    stack: list[str | None] = []
    found = set()
    for i, char in enumerate(text):
        if char == "(":
            match = _AGGREGATION.search(text[: i + 1])
            stack.append(match.group(1) if match else None)
        elif char == ")":
            stack.pop()
        elif (i == 0 or not re.match(r"[\w:]", text[i - 1])) and (
            word := re.match(r"[A-Za-z_:][\w:]*", text[i:])
        ):
            innermost = next((agg for agg in reversed(stack) if agg), None)
            if word.group() in STORE_GAUGES and innermost == "sum":
                found.add(word.group())
    return found


@pytest.fixture
async def krolik_metric_names(api: httpx.AsyncClient) -> set[str]:
    """The series names Krolik exports, from a real scrape of the API's /metrics (its
    Metrics registry holds every counter and histogram, the store gauges come with it),
    plus Prometheus' own ``up``."""
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    names = exported_names(response.text)
    assert {"krolik_tasks_submitted_total", "krolik_tasks", "krolik_outbox_lag_seconds"} <= names
    return names | {"up"}
