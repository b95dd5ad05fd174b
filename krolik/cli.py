"""The ``krolik`` command: migrate, api, worker, relay."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn

from krolik.builtin_tasks import builtin_registry
from krolik.components import build_broker, build_store
from krolik.errors import (
    BrokerUnavailable,
    ConfigurationError,
    InvalidTransition,
    StoreUnavailable,
)
from krolik.heap import tune_garbage_collector
from krolik.log import configure_logging, get_logger
from krolik.maintenance import LeaseRescuer
from krolik.registry import Registry, default_registry
from krolik.relay import OutboxRelay
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.worker import Worker

cli = typer.Typer(
    name="krolik",
    help="Krolik: a task queue that never loses a task.",
    no_args_is_help=True,
    add_completion=False,
)
log = get_logger("krolik.cli")
T = TypeVar("T")


class KeyScope(StrEnum):
    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


HostOption = Annotated[str, typer.Option(help="Address to listen on.")]
PortOption = Annotated[int, typer.Option(help="Port to listen on.")]
AppOption = Annotated[
    str | None,
    typer.Option("--app", help="Importable module that registers your task handlers."),
]


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived service on uvloop where it is installed (a faster event loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop does not exist on every platform
        return asyncio.run(main)
    return uvloop.run(main)


def load_settings() -> Settings:
    """The settings, with logging set up first: a setting that fails to parse is a log line
    too (JSON off a terminal), then again at the level the settings ask for."""
    configure_logging()
    settings = Settings()
    configure_logging(level=settings.log_level or ("DEBUG" if settings.debug else "INFO"))
    return settings


def load_registry(module: str | None) -> Registry:
    """The built-in handlers plus those ``module`` registers (its ``registry`` or the default)."""
    if module is None:
        return builtin_registry.merged(default_registry)
    sys.path.insert(0, "")
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module!r}: {exc}", param_hint="--app") from None
    own = getattr(imported, "registry", None)
    user = own if isinstance(own, Registry) else default_registry
    return builtin_registry.merged(user)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, installed before anything slow starts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _retrying(
    what: str, connect: Callable[[], Awaitable[None]], stop: asyncio.Event, interval: float = 2.0
) -> bool:
    """Wait for a service instead of crashing (containers start in any order).

    False when a signal asked the process to stop first.
    """
    while not stop.is_set():
        try:
            await connect()
            return True
        except (BrokerUnavailable, StoreUnavailable) as exc:
            log.warning("waiting_for_service", service=what, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    return False


@cli.command()
def migrate() -> None:
    """Apply the database migrations (safe to run again)."""
    from krolik.migrate import upgrade

    settings = load_settings()
    upgrade(settings.db.dsn)
    log.info("migrated")


@cli.command()
def api(host: HostOption = "127.0.0.1", port: PortOption = 8000) -> None:
    """Run the HTTP API (with the outbox relay inside, unless APP__RELAY__ENABLED=false)."""
    from krolik.api.app import create_app

    settings = load_settings()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at once (default: setting).")
    ] = None,
    app: AppOption = None,
    queues: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Queue to consume (repeatable).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve /metrics, /health and /health/ready on this port."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics port.")] = "0.0.0.0",  # noqa: S104
) -> None:
    """Run a worker: consume tasks, run handlers, rescue tasks of dead workers."""
    settings = load_settings()
    registry = load_registry(app)
    run_loop(_run_worker(settings, registry, concurrency, queues, metrics_host, metrics_port))


async def _run_worker(
    settings: Settings,
    registry: Registry,
    concurrency: int | None,
    queues: list[str] | None,
    metrics_host: str,
    metrics_port: int | None,
) -> None:
    from krolik.metrics import Metrics
    from krolik.worker.probe import probe_server

    store, broker = build_store(settings), build_broker(settings)
    metrics = Metrics()
    the_worker = Worker(
        store,
        broker,
        registry,
        settings,
        queues=queues,
        concurrency=concurrency,
        observer=metrics,
    )
    rescuer = LeaseRescuer(store, settings.maintenance, metrics, broker=broker)
    stop = _stop_on_signals()
    probe = probe_server(the_worker, metrics, metrics_host, metrics_port) if metrics_port else None
    serving = asyncio.create_task(probe.serve()) if probe else None
    try:
        await store.open()
        if await _retrying("database", store.ping, stop) and await _retrying(
            "rabbitmq", the_worker.start, stop
        ):
            rescuer.start()
            tune_garbage_collector()
            await stop.wait()
            log.info("signal_received")
    finally:
        await the_worker.stop()
        await rescuer.stop()
        if probe is not None and serving is not None:
            probe.should_exit = True
            await serving
        await broker.close()
        await store.close()


@cli.command()
def dev(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    app: AppOption = None,
    data: Annotated[
        Path | None,
        typer.Option(help="SQLite file that holds the tasks (default: APP__EMBEDDED__PATH)."),
    ] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Tasks run at once.")] = None,
) -> None:
    """Run everything in one process with no servers: API, relay, worker, on SQLite."""
    from krolik.embedded import run_embedded

    settings = load_settings()
    if data is not None:
        settings.embedded.path = str(data)
    registry = load_registry(app)
    run_loop(run_embedded(settings, registry, host=host, port=port, concurrency=concurrency))


@cli.command()
def relay() -> None:
    """Run an outbox relay on its own (several may run at once)."""
    settings = load_settings()
    run_loop(_run_relay(settings))


async def _run_relay(settings: Settings) -> None:
    store, broker = build_store(settings), build_broker(settings)
    await store.open()
    stop = _stop_on_signals()
    the_relay = OutboxRelay(store, broker, settings.relay)
    the_relay.start()
    tune_garbage_collector()
    try:
        await stop.wait()
        log.info("signal_received")
    finally:
        await the_relay.stop()
        await broker.close()
        await store.close()


keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="Manage the keys of a krolik dev data file instead of PostgreSQL."),
]


def _keys_store(settings: Settings, data: Path | None) -> TaskStore:
    if data is None:
        return build_store(settings)
    from krolik.store.sqlite import SqliteTaskStore

    return SqliteTaskStore(data.resolve())


async def _with_store(
    settings: Settings, data: Path | None, action: Callable[[TaskStore], Awaitable[T]]
) -> T:
    store = _keys_store(settings, data)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A unique name; it appears on the tasks it creates.")],
    scope: Annotated[
        KeyScope, typer.Option(help="read: read tasks; submit: also create; admin: everything.")
    ] = KeyScope.SUBMIT,
    data: DataOption = None,
) -> None:
    """Create a key and print it: it is shown once, only its hash is kept."""
    from krolik.api.auth import hash_key, new_key

    settings = load_settings()
    key = new_key()
    try:
        asyncio.run(
            _with_store(
                settings, data, lambda s: s.create_api_key(name, scope.value, hash_key(key))
            )
        )
    except InvalidTransition as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    typer.echo(key)
    typer.echo(
        f"created key {name!r} with scope {scope.value}; it will not be shown again", err=True
    )


@keys_cli.command("list")
def keys_list(data: DataOption = None) -> None:
    """List keys (names, scopes, dates; never the keys)."""
    settings = load_settings()
    found = asyncio.run(_with_store(settings, data, lambda s: s.list_api_keys()))
    for key in found:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        typer.echo(f"{key.name}\t{key.scope}\t{key.created_at:%Y-%m-%d %H:%M}\t{state}")


@keys_cli.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")], data: DataOption = None
) -> None:
    """Revoke a key; API processes stop accepting it within APP__AUTH__CACHE_SECONDS."""
    settings = load_settings()
    if not asyncio.run(_with_store(settings, data, lambda s: s.revoke_api_key(name))):
        typer.echo(f"error: no active key named {name!r}", err=True)
        raise SystemExit(1)
    typer.echo(f"revoked key {name!r}")


def main() -> None:
    try:
        cli()
    except ConfigurationError as exc:
        if sys.stderr.isatty():
            typer.echo(f"error: {exc}", err=True)
        else:
            log.error("configuration_error", error=str(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
