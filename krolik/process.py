"""A node run as a process: the event loop, the signals that stop it, what it serves.

``krolik api`` serves the node's app with uvicorn; ``krolik worker``, ``relay`` and ``scheduler``
run the node until SIGTERM or SIGINT (a worker may also serve its metrics and health
port, or, with ``--burst``, stop by itself once nothing it can run is due).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn

from krolik.heap import tune_garbage_collector
from krolik.log import get_logger
from krolik.node import Node

log = get_logger(__name__)
T = TypeVar("T")

BURST_POLL_SECONDS = 0.2


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived service on uvloop where it is installed (a faster event loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop does not exist on every platform
        return asyncio.run(main)
    return uvloop.run(main)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, installed before anything slow starts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def serve_api(node: Node, host: str, port: int) -> None:
    from krolik.api.app import create_app  # the HTTP stack, for the processes that serve it

    uvicorn.run(
        create_app(node),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


async def serve_worker(
    node: Node, *, metrics_host: str, metrics_port: int | None, burst: bool = False
) -> None:
    """Run the node's worker until a signal (or, in a burst, until it is drained)."""
    from krolik.worker.probe import probe_server

    worker = node.worker
    assert worker is not None, "the node was built with the worker role"
    stop = stop_on_signals()
    probe = probe_server(worker, node.metrics, metrics_host, metrics_port) if metrics_port else None
    serving = asyncio.create_task(probe.serve()) if probe else None
    try:
        if await node.start(stop):
            tune_garbage_collector()
            if burst:
                await _until_drained(node, stop)
            else:
                await stop.wait()
                log.info("signal_received")
    finally:
        await node.stop()
        if probe is not None and serving is not None:
            probe.should_exit = True
            await serving


async def _until_drained(node: Node, stop: asyncio.Event) -> None:
    """A burst (arq's mode): run what is due now, then stop. Drained means nothing this
    worker can run is due and nothing is running, twice in a row: a retry scheduled
    for later does not keep it up, a retry due at once does."""
    worker = node.worker
    assert worker is not None
    quiet = 0
    while not stop.is_set() and quiet < 2:
        quiet = quiet + 1 if await worker.drained() else 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), BURST_POLL_SECONDS)
    log.info("worker_burst_done", **vars(worker.stats))


async def serve_until_stopped(node: Node) -> None:
    stop = stop_on_signals()
    await node.start()
    tune_garbage_collector()
    try:
        await stop.wait()
        log.info("signal_received")
    finally:
        await node.stop()
