"""Traces with the OpenTelemetry extra: a submit's ``traceparent`` is kept, and the submit,
the queue wait, the run (with the handler's own spans inside) and the webhook call are
spans of the caller's trace. Without tracing, OpenTelemetry is not even imported."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from krolik.registry import Registry
from krolik.tracing import valid_traceparent
from tests.contract.http import embedded_app, submit, wait_for
from tests.support.receiver import Receiver, receiving

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
REPO_ROOT = Path(__file__).resolve().parents[2]

traced = Registry()


@traced.task(name="traced.work")
async def work(payload: Any) -> str:
    with trace.get_tracer("handler").start_as_current_span("handler.step"):
        return "worked"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """One SDK provider for the process (OpenTelemetry takes the first one set)."""
    spans = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return spans


@pytest.fixture
async def traced_client(
    sqlite_template: Path, tmp_path: Path, run_id: str, exporter: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    exporter.clear()
    async with embedded_app(
        sqlite_template, tmp_path, run_id, traced, tracing={"enabled": True}
    ) as client:
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as the_receiver:
        yield the_receiver


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    """Krolik's spans and the handler's (FastAPI makes spans of its own too)."""
    return {span.name: span for span in spans if span.name.startswith(("krolik.", "handler."))}


async def test_a_task_s_spans_are_children_of_the_submit_s_trace(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter, receiver: Receiver
) -> None:
    response = await traced_client.post(
        "/tasks/",
        json={"payload": 1, "name": "traced.work", "webhook_url": receiver.url()},
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["task_id"]
    done = await wait_for(traced_client, task_id, "done")
    assert done["traceparent"] == TRACEPARENT
    [call] = await receiver.wait_for(1)
    spans = by_name(exporter.get_finished_spans())
    while "krolik.webhook" not in spans:  # ended just after the answer came
        await receiver.wait_for(1)
        spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "krolik.submit",
        "krolik.queue_wait",
        "krolik.run traced.work",
        "handler.step",
        "krolik.webhook",
    }
    for span in spans.values():
        assert format(span.context.trace_id, "032x") == TRACE_ID, span.name
    for name in ("krolik.submit", "krolik.queue_wait", "krolik.run traced.work", "krolik.webhook"):
        assert spans[name].parent is not None
        assert format(spans[name].parent.span_id, "016x") == CALLER_SPAN, name
    run = spans["krolik.run traced.work"]
    assert spans["handler.step"].parent is not None
    assert spans["handler.step"].parent.span_id == run.context.span_id  # nested in the run
    assert run.attributes is not None
    assert run.attributes["krolik.task_id"] == task_id
    assert run.attributes["krolik.outcome"] == "succeeded"
    # The receiver is told the trace too: its own spans join it under the webhook call.
    webhook = spans["krolik.webhook"]
    assert call.headers["traceparent"] == (
        f"00-{TRACE_ID}-{format(webhook.context.span_id, '016x')}-01"
    )


async def test_a_submit_without_a_trace_makes_no_spans(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    created = await submit(traced_client, payload=1, name="traced.work")
    done = await wait_for(traced_client, created["task_id"], "done")
    assert done["traceparent"] is None
    assert [s.name for s in exporter.get_finished_spans() if s.name.startswith("krolik")] == []


@pytest.mark.parametrize(
    "header",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short
        "not a traceparent",
    ],
)
def test_an_invalid_traceparent_is_ignored(header: str) -> None:
    assert valid_traceparent(header) is None
    assert valid_traceparent(TRACEPARENT.upper()) == TRACEPARENT


def test_without_tracing_a_worker_imports_no_opentelemetry() -> None:
    script = """
import json, sys
from krolik.node import Node, Role
from krolik.settings import Settings
Node.build(Settings(_env_file=None), {Role.WORKER}, mode="embedded")
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
"""
    env_free = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env=env_free,
        timeout=60,
    )
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
