"""Keep the garbage collector's passes off the request and task paths.

A Krolik process builds a few hundred thousand objects that live as long as it
does: modules, FastAPI routes, pydantic validators, SQLAlchemy and aio-pika state.
CPython's full collection walks all of them (50-80 ms per pass for the API) and
starts whenever the objects promoted since the last one reach a quarter of them,
which under load is several times a second: a sixth of the API's CPU and the
whole of its latency tail. Freezing the heap once start-up is done moves those
objects out of the collector's sight; later garbage is collected as before.

The youngest generation is also collected less often: a request or a task leaves
its garbage to reference counting, and a pass every 700 allocations mostly walks
the objects of the requests still in flight.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Allocations (net of frees) between two passes over the youngest generation."""
MIDDLE_THRESHOLD = 20
OLDEST_THRESHOLD = 100


def tune_garbage_collector() -> None:
    """Collect start-up garbage, freeze everything still alive, space out the passes.

    Call it once a process has started its long-lived parts. Calling it again is
    harmless: it freezes what has accumulated since.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLDEST_THRESHOLD)
