"""The spans themselves (imported only with tracing on and OpenTelemetry installed)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from krolik import __version__
from krolik.events import Observer
from krolik.settings import TracingSettings
from krolik.store.records import Task

PROPAGATOR = TraceContextTextMapPropagator()
FAILED_RESULTS = {"failed", "retried"}


def _ns(stamp: datetime | None) -> int | None:
    return None if stamp is None else int(stamp.timestamp() * 1e9)


def parent_of(traceparent: str | None) -> context.Context | None:
    """The context a task's spans are children of, or None (no trace: no spans)."""
    if traceparent is None:
        return None
    found = PROPAGATOR.extract({"traceparent": traceparent})
    return found if trace.get_current_span(found).get_span_context().is_valid else None


class TaskSpans(Observer):
    """Makes the spans of tasks from the observer hooks. A run's span is started in
    ``task_started`` and made current for the rest of the run (the hooks run in the run's
    own asyncio task), so whatever the handler traces nests in it."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self._runs: dict[tuple[int, int], tuple[trace.Span, object]] = {}

    @classmethod
    def create(cls, settings: TracingSettings) -> TaskSpans:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            _set_up_provider(settings)  # the process configured none of its own
        return cls(trace.get_tracer("krolik", __version__))

    # -- the API -------------------------------------------------------------------------
    @contextlib.contextmanager
    def submitting(self, traceparent: str | None) -> Iterator[str | None]:
        """Around a submit: a ``krolik.submit`` span under the caller's context; gives the
        traceparent to store with the task (the submit span's, so runs are its siblings
        under the caller's span: the caller's header itself)."""
        parent = parent_of(traceparent)
        if parent is None:
            yield traceparent
            return
        with self.tracer.start_as_current_span(
            "krolik.submit", context=parent, kind=SpanKind.PRODUCER
        ):
            yield traceparent

    # -- the worker ----------------------------------------------------------------------
    def task_started(self, task: Task) -> None:
        parent = parent_of(task.traceparent)
        if parent is None:
            return
        attributes = _attributes(task)
        due = max(task.run_at, task.created_at)
        if task.started_at is not None and task.started_at >= due:
            self.tracer.start_span(
                "krolik.queue_wait", context=parent, start_time=_ns(due), attributes=attributes
            ).end(end_time=_ns(task.started_at))
        span = self.tracer.start_span(
            f"krolik.run {task.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=_ns(task.started_at),
            attributes=attributes | {"krolik.attempt": task.attempts},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        self._runs[(task.id, task.run_token)] = (span, token)

    def task_finished(self, task: Task, result: str, seconds: float) -> None:
        held = self._runs.pop((task.id, task.run_token), None)
        if held is None:
            return
        span, token = held
        span.set_attribute("krolik.outcome", result)
        if result in FAILED_RESULTS:
            span.set_status(Status(StatusCode.ERROR, result))
        span.end()
        with contextlib.suppress(ValueError):  # attached in another context: leave it
            context.detach(token)  # type: ignore[arg-type]

    # -- webhooks ------------------------------------------------------------------------
    @contextlib.contextmanager
    def calling(self, task: Task, url: str, headers: dict[str, str]) -> Iterator[None]:
        """Around a webhook call of a traced task: a ``krolik.webhook`` span, passed on to
        the receiver in ``headers`` (``traceparent``)."""
        parent = parent_of(task.traceparent)
        if parent is None:
            yield
            return
        with self.tracer.start_as_current_span(
            "krolik.webhook",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=_attributes(task) | {"url.full": url},
        ):
            PROPAGATOR.inject(headers)
            yield


def _attributes(task: Task) -> dict[str, str | int]:
    return {"krolik.task_id": task.id, "krolik.task_name": task.name, "krolik.queue": task.queue}


def _set_up_provider(settings: TracingSettings) -> None:
    """An SDK provider exporting over OTLP (``OTEL_EXPORTER_OTLP_*``), when the extra's
    exporter is installed; without it, spans are made and dropped (a warning says so)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from krolik.log import get_logger

    name = settings.service_name or os.environ.get("OTEL_SERVICE_NAME") or "krolik"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        get_logger(__name__).warning(
            "tracing_without_exporter", hint="pip install 'krolik[otel]' for the OTLP exporter"
        )
    else:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
