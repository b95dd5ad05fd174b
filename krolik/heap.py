"""Keep the garbage collector's full passes off the request and task paths.

A Krolik process builds a few hundred thousand objects that live as long as it
does: modules, FastAPI routes, pydantic validators, SQLAlchemy and aio-pika state.
CPython's full collection walks all of them (50-80 ms per pass for the API) and
starts whenever the objects promoted since the last one reach a quarter of them,
which under load is several times a second: a sixth of the API's CPU and the
whole of its latency tail. Freezing the heap once start-up is done moves those
objects out of the collector's sight; later garbage is collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect start-up garbage, then exclude everything still alive from future passes.

    Call it once a process has started its long-lived parts. Calling it again is
    harmless: it freezes what has accumulated since.
    """
    gc.collect()
    gc.freeze()
