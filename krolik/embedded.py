"""The embedded mode: API, relay, worker and rescuer in one process, on SQLite.

SQLite is the source of truth, exactly as PostgreSQL is in production; the
in-process broker only wakes the worker. Because that broker forgets everything
when the process ends, start-up dispatches again every due pending task that has
no outbox row; running tasks of a killed process come back when their lease
expires, through the rescuer, as in production.
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import uvicorn

from krolik.api.app import create_app
from krolik.errors import ConfigurationError
from krolik.log import get_logger
from krolik.node import Mode, Node, Role
from krolik.registry import Registry
from krolik.settings import Settings

log = get_logger(__name__)
REDISPATCH_BATCH = 10_000


@dataclass
class Embedded:
    """What ``krolik dev`` runs: a node of both roles on SQLite and the in-process broker,
    plus what only one process owning its data file can do at start-up."""

    node: Node
    path: Path
    _lock: IO[bytes] = field(init=False, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        registry: Registry,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> Embedded:
        node = Node.build(
            settings,
            {Role.API, Role.WORKER},
            mode=Mode.EMBEDDED,
            registry=registry,
            concurrency=concurrency,
            queues=queues,
        )
        return cls(node, Path(settings.embedded.path).resolve())

    async def start(self) -> None:
        self._lock = _lock_data_file(self.path)
        store = self.node.store
        await store.open()
        # No other process can hold a lease on this file: runs of a killed process
        # go back to pending (their attempt counted) at once instead of after the lease.
        orphans = await store.expire_all_leases()
        if orphans:
            log.warning("orphaned_runs_found", count=orphans)
            assert self.node.rescuer is not None
            await self.node.rescuer.tick()
        # The in-process broker lost its messages with the last process: send them again.
        while await store.redispatch_stale(0, REDISPATCH_BATCH) >= REDISPATCH_BATCH:
            pass
        await self.node.start()

    async def stop(self) -> None:
        await self.node.stop()
        self._lock.close()


def _lock_data_file(path: Path) -> IO[bytes]:
    """Hold an exclusive lock beside the data file for the life of the process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = (path.parent / f"{path.name}.lock").open("wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigurationError(
            f"another krolik dev is using {path}; stop it or choose another --data file"
        ) from None
    return handle


def banner(host: str, port: int, data: Path) -> str:
    base = f"http://{host}:{port}"
    return "\n".join(
        [
            "",
            f"Krolik (embedded mode) is listening on {base}",
            f"  data:   {data}",
            f"  health: {base}/health/ready",
            "Submit a first task and read it back:",
            f"  curl -s -X POST {base}/tasks/ -H 'Content-Type: application/json' "
            '-d \'{"payload": "hello"}\'',
            f"  curl -s {base}/tasks/1",
            "Stop with Ctrl-C; tasks are kept in the data file.",
            "",
        ]
    )


async def run_embedded(
    settings: Settings,
    registry: Registry,
    *,
    host: str,
    port: int,
    concurrency: int | None = None,
) -> None:
    embedded = Embedded.build(settings, registry, concurrency=concurrency)
    await embedded.start()
    try:
        app = create_app(embedded.node)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=5,
            )
        )
        original_startup = server.startup

        async def startup(sockets: object = None) -> None:
            await original_startup(sockets)  # type: ignore[arg-type]
            if not server.started:
                return
            if sys.stderr.isatty():  # a person reads it
                print(banner(host, port, embedded.path), file=sys.stderr, flush=True)
            else:  # a program does: one log line like every other
                log.info(
                    "krolik_dev_listening",
                    message=f"Krolik (embedded mode) is listening on http://{host}:{port}",
                    url=f"http://{host}:{port}",
                    data=str(embedded.path),
                )

        server.startup = startup  # type: ignore[method-assign]
        with _survive_reraised_signals():
            await server.serve()
    finally:
        await embedded.stop()


@contextlib.contextmanager
def _survive_reraised_signals() -> Iterator[None]:
    """uvicorn raises the SIGTERM or SIGINT that stopped it again once it is done, for
    the handler it found: the default one would end the process before the worker
    drained. Around ``serve`` that signal is let go; afterwards the defaults are back,
    so a second signal while draining stops the process at once."""
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
