"""Traces: the spans of a task in its caller's trace, with the OpenTelemetry extra.

A submit that comes with a W3C ``traceparent`` header keeps it on the task (whether or
not tracing is on: it costs a column). With ``APP__TRACING__ENABLED`` and the extra
installed (``pip install 'krolik[otel]'``), every process makes spans as children of it:
``krolik.submit`` in the API, ``krolik.queue_wait`` and ``krolik.run <name>`` in the worker
(a handler's own spans nest in its run), ``krolik.webhook`` in the sender, which also
passes the trace on to the receiver. Without both, nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from krolik.log import get_logger
from krolik.settings import TracingSettings

if TYPE_CHECKING:
    from krolik.tracing.spans import TaskSpans

log = get_logger(__name__)

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is a W3C traceparent, else None (the spec says: ignore it)."""
    if value is None or len(value) != 55 or value.startswith("ff"):
        return None
    value = value.lower()
    return value if TRACEPARENT.match(value) else None


def build_tracing(settings: TracingSettings) -> TaskSpans | None:
    """The span maker of a process, or None when tracing is off or not installed."""
    if not settings.enabled:
        return None
    try:
        from krolik.tracing.spans import TaskSpans

        return TaskSpans.create(settings)
    except ImportError as exc:
        log.warning("tracing_unavailable", error=str(exc), hint="pip install 'krolik[otel]'")
        return None
