"""The ``krolik`` command: each command reads its options, picks the roles of its node and
hands it to ``krolik/process.py`` to run (``krolik dev`` to ``krolik/embedded.py``)."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from krolik import console
from krolik.access import Scope
from krolik.builtin_tasks import builtin_registry
from krolik.errors import ConfigurationError, InvalidTransition, StoreError
from krolik.flow import QueueGates
from krolik.log import configure_logging, get_logger
from krolik.node import Mode, Node, Role, build_store
from krolik.process import run_loop, serve_api, serve_until_stopped, serve_worker
from krolik.registry import Registry, default_registry
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.records import PruneRule

cli = typer.Typer(
    name="krolik",
    help="Krolik: a task queue that never loses a task.",
    no_args_is_help=True,
    add_completion=False,
)
log = get_logger("krolik.cli")
T = TypeVar("T")


SCOPE_NAMES = [scope.name.lower() for scope in Scope]
"""The scopes of ``krolik/access.py``, as the command line takes them."""


def _scope_name(value: str) -> str:
    if value not in SCOPE_NAMES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(SCOPE_NAMES)}")
    return value


HostOption = Annotated[str, typer.Option(help="Address to listen on.")]
PortOption = Annotated[int, typer.Option(help="Port to listen on.")]
AppOption = Annotated[
    str | None,
    typer.Option("--app", help="Importable module that registers your task handlers."),
]


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
    settings = load_settings()
    serve_api(Node.build(settings, {Role.API}), host, port)


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
    burst: Annotated[
        bool, typer.Option(help="Run what is due now, then exit (scripts and tests).")
    ] = False,
) -> None:
    """Run a worker: consume tasks, run handlers, rescue tasks of dead workers."""
    settings = load_settings()
    node = Node.build(
        settings,
        {Role.WORKER},
        registry=load_registry(app),
        concurrency=concurrency,
        queues=queues,
    )
    run_loop(serve_worker(node, metrics_host=metrics_host, metrics_port=metrics_port, burst=burst))


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
    run_loop(serve_until_stopped(Node.build(settings, {Role.RELAY})))


@cli.command()
def scheduler(app: AppOption = None) -> None:
    """Run a scheduler on its own: make the tasks of due schedules (every worker runs one
    too; any number may run, each tick makes one task)."""
    settings = load_settings()
    node = Node.build(settings, {Role.SCHEDULER}, registry=load_registry(app))
    run_loop(serve_until_stopped(node))


keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="Use a krolik dev data file instead of PostgreSQL."),
]


def _keys_store(settings: Settings, data: Path | None) -> TaskStore:
    if data is None:
        return build_store(settings)
    settings.embedded.path = str(data)
    return build_store(settings, Mode.EMBEDDED)


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
        str,
        typer.Option(
            callback=_scope_name,
            help="read: read tasks; submit: also create; admin: everything.",
        ),
    ] = "submit",
    data: DataOption = None,
) -> None:
    """Create a key and print it: it is shown once, only its hash is kept."""
    from krolik.access import hash_key, new_key

    settings = load_settings()
    key = new_key()
    try:
        asyncio.run(
            _with_store(settings, data, lambda s: s.create_api_key(name, scope, hash_key(key)))
        )
    except InvalidTransition as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    typer.echo(key)
    typer.echo(f"created key {name!r} with scope {scope}; it will not be shown again", err=True)


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


schedules_cli = typer.Typer(
    help="List, add, pause, resume and delete schedules.", no_args_is_help=True
)
cli.add_typer(schedules_cli, name="schedules")


@schedules_cli.command("list")
def schedules_list(data: DataOption = None) -> None:
    """Every schedule (from code and the API): timing, state, next and last run."""
    settings = load_settings()
    found = asyncio.run(_with_store(settings, data, lambda s: s.list_schedules()))
    typer.echo(f"{'name':<28} {'source':<6} {'timing':<24} {'state':<7} {'next run':<26} last run")
    for item in found:
        timing = item.cron if item.cron is not None else f"every {item.every_seconds:g}s"
        if item.tz != "UTC":
            timing += f" {item.tz}"
        state = "paused" if item.paused else "active"
        upcoming = "-" if item.paused else f"{item.next_run_at:%Y-%m-%d %H:%M:%S %Z}"
        last = f"{item.last_run_at:%Y-%m-%d %H:%M:%S %Z}" if item.last_run_at else "-"
        typer.echo(
            f"{item.name:<28} {item.source:<6} {timing:<24} {state:<7} {upcoming:<26} {last}"
        )


@schedules_cli.command("add")
def schedules_add(
    name: Annotated[str, typer.Argument(help="A unique name.")],
    task_name: Annotated[str, typer.Option("--task", help="The handler each tick runs.")],
    cron: Annotated[str | None, typer.Option(help="Cron, or @hourly, @daily...")] = None,
    every: Annotated[float | None, typer.Option(help="Seconds between ticks.")] = None,
    tz: Annotated[str, typer.Option(help="IANA time zone of the cron.")] = "UTC",
    payload: Annotated[str, typer.Option(help="The task's payload, as JSON.")] = "null",
    queue: Annotated[str | None, typer.Option(help="The task's queue.")] = None,
    catch_up: Annotated[str, typer.Option(help="skip, once or all.")] = "once",
    data: DataOption = None,
) -> None:
    """Create a schedule (as POST /schedules does)."""
    import orjson
    from pydantic import ValidationError

    from krolik.schedules.spec import ScheduledTask, new_schedule
    from krolik.schedules.timing import CatchUp, InvalidSchedule, Timing

    settings = load_settings()
    try:
        new = new_schedule(
            name,
            source="api",
            timing=Timing(cron=cron, every_seconds=every, tz=tz),
            task=ScheduledTask(name=task_name, payload=orjson.loads(payload), queue=queue),
            catch_up=CatchUp(catch_up),
            now=datetime.now(UTC),
        )
        made = asyncio.run(_with_store(settings, data, lambda s: s.create_schedule(new)))
    except (InvalidSchedule, ValidationError, ValueError, InvalidTransition) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    typer.echo(f"created schedule {made.name!r}; next run {made.next_run_at:%Y-%m-%d %H:%M:%S %Z}")


def _set_paused(name: str, paused: bool, data: Path | None) -> None:
    from krolik.schedules.control import set_paused

    settings = load_settings()
    found = asyncio.run(_with_store(settings, data, lambda s: set_paused(s, name, paused)))
    if found is None:
        typer.echo(f"error: no schedule named {name!r}", err=True)
        raise SystemExit(1)
    typer.echo(f"{'paused' if paused else 'resumed'} schedule {name!r}")


@schedules_cli.command("pause")
def schedules_pause(
    name: Annotated[str, typer.Argument(help="The schedule's name.")], data: DataOption = None
) -> None:
    """Pause a schedule: no ticks until it is resumed."""
    _set_paused(name, True, data)


@schedules_cli.command("resume")
def schedules_resume(
    name: Annotated[str, typer.Argument(help="The schedule's name.")], data: DataOption = None
) -> None:
    """Resume from the next tick (the ticks of the pause are not run)."""
    _set_paused(name, False, data)


@schedules_cli.command("delete")
def schedules_delete(
    name: Annotated[str, typer.Argument(help="The schedule's name.")], data: DataOption = None
) -> None:
    """Delete a schedule (its tasks stay; one of code comes back with its next worker)."""
    settings = load_settings()
    if not asyncio.run(_with_store(settings, data, lambda s: s.delete_schedule(name))):
        typer.echo(f"error: no schedule named {name!r}", err=True)
        raise SystemExit(1)
    typer.echo(f"deleted schedule {name!r}")


queues_cli = typer.Typer(
    help="Each queue's pause and limits: list, pause, resume, set.", no_args_is_help=True
)
cli.add_typer(queues_cli, name="queues")


def _limit(value: object) -> str:
    return "-" if value is None else str(value)


@queues_cli.command("list")
def queues_list(data: DataOption = None) -> None:
    """Every queue with gates set: pause, limits, and the tasks they hold."""
    settings = load_settings()

    async def read(store: TaskStore) -> tuple[list[QueueGates], dict[str, dict[str, int]]]:
        return await store.list_gates(), await store.held_counts()

    gates, held = asyncio.run(_with_store(settings, data, read))
    typer.echo(
        f"{'queue':<24} {'state':<7} {'max_running':<12} {'per_key':<8} {'rate':<18} "
        f"{'priority':<9} held"
    )
    for item in gates:
        waiting = ", ".join(f"{n} {why}" for why, n in sorted(held.get(item.name, {}).items()))
        typer.echo(
            f"{item.name:<24} {'paused' if item.paused else 'active':<7} "
            f"{_limit(item.max_running):<12} {_limit(item.max_running_per_key):<8} "
            f"{_limit(item.rate_limit):<18} {_limit(item.default_priority):<9} {waiting or '-'}"
        )


def _change_queue(name: str, changes: dict[str, object], data: Path | None) -> QueueGates:
    from krolik.flow import change_gates

    settings = load_settings()
    try:
        return asyncio.run(_with_store(settings, data, lambda s: change_gates(s, name, changes)))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


QueueArgument = Annotated[str, typer.Argument(help="The queue's name.")]


@queues_cli.command("pause")
def queues_pause(name: QueueArgument, data: DataOption = None) -> None:
    """No new starts in the queue; running tasks finish, submissions are still accepted."""
    _change_queue(name, {"paused": True}, data)
    typer.echo(f"paused queue {name!r}")


@queues_cli.command("resume")
def queues_resume(name: QueueArgument, data: DataOption = None) -> None:
    """Start the queue's held tasks again, as many as its limits allow."""
    _change_queue(name, {"paused": False}, data)
    typer.echo(f"resumed queue {name!r}")


@queues_cli.command("set")
def queues_set(
    name: QueueArgument,
    max_running: Annotated[
        str | None, typer.Option(help="At most this many run at once ('none' lifts it).")
    ] = None,
    max_running_per_key: Annotated[
        str | None, typer.Option(help="At most this many of one concurrency_key ('none').")
    ] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help="Starts per window, e.g. 60/minute ('none').")
    ] = None,
    default_priority: Annotated[
        str | None,
        typer.Option(help="Priority of its tasks that give none, -1000 to 1000 ('none')."),
    ] = None,
    data: DataOption = None,
) -> None:
    """Change a queue's limits at run time (as PATCH /queues/{name} does)."""
    changes: dict[str, object] = {}
    for field, given in (
        ("max_running", max_running),
        ("max_running_per_key", max_running_per_key),
        ("rate_limit", rate_limit),
        ("default_priority", default_priority),
    ):
        if given is None:
            continue
        if given.lower() == "none":
            changes[field] = None
        elif field == "rate_limit":
            changes[field] = given
        elif field == "default_priority":
            changes[field] = _priority_option(given)
        else:
            least = 0 if field == "max_running" else 1
            if not given.isdigit() or int(given) < least:
                option = field.replace("_", "-")
                typer.echo(f"error: --{option} takes a number from {least}, or none", err=True)
                raise SystemExit(1)
            changes[field] = int(given)
    if not changes:
        typer.echo(
            "error: nothing to change (--max-running, --max-running-per-key, --rate-limit, "
            "--default-priority)",
            err=True,
        )
        raise SystemExit(1)
    gates = _change_queue(name, changes, data)
    typer.echo(
        f"queue {name!r}: max_running {_limit(gates.max_running)}, max_running_per_key "
        f"{_limit(gates.max_running_per_key)}, rate_limit {_limit(gates.rate_limit)}, "
        f"default_priority {_limit(gates.default_priority)}"
    )


def _priority_option(given: str) -> int:
    from krolik.flow import PRIORITY_RANGE

    low, high = PRIORITY_RANGE
    try:
        value = int(given)
    except ValueError:
        value = high + 1
    if not low <= value <= high:
        typer.echo(
            f"error: --default-priority takes a number from {low} to {high}, or none", err=True
        )
        raise SystemExit(1)
    return value


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _queues_of(rule: PruneRule) -> str:
    if rule.queues is not None:
        return ",".join(rule.queues)
    return "*" if not rule.except_queues else f"* but {','.join(rule.except_queues)}"


@cli.command()
def prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted.")
    ] = False,
    data: DataOption = None,
) -> None:
    """Delete finished tasks past their retention now (APP__RETENTION__...), as the
    cleaner beside each worker does; with --dry-run, show what would go."""
    from krolik.retention import retention_rules

    settings = load_settings()
    rules = retention_rules(settings.retention)

    async def run(store: TaskStore) -> list[tuple[str, str, str, int]]:
        lines = []
        for rule in rules:
            kept = _age(rule.older_than_seconds)
            if dry_run:
                counts = await store.count_prunable(rule)
                lines += [(rule.status.value, q, kept, n) for q, n in sorted(counts.items())]
                continue
            deleted = 0
            while (batch := await store.prune(rule, settings.retention.batch_size)) > 0:
                deleted += batch
            lines.append((rule.status.value, _queues_of(rule), kept, deleted))
        return lines

    lines = asyncio.run(_with_store(settings, data, run))
    verb = "would be deleted" if dry_run else "deleted"
    typer.echo(f"{'status':<10} {'queue':<24} {'kept for':<9} {verb}")
    for status, queue, kept, count in lines:
        typer.echo(f"{status:<10} {queue:<24} {kept:<9} {count:,}")
    total = sum(line[3] for line in lines)
    typer.echo(f"{total:,} finished tasks {verb}")


# -- the command line for people: through the API ---------------------------------------
cli.command()(console.submit)
cli.add_typer(console.tasks_cli, name="tasks")
cli.command()(console.workers)
cli.command()(console.tail)


def main() -> None:
    try:
        cli()
    except ConfigurationError as exc:
        _say("configuration_error", exc)
        raise SystemExit(2) from None
    except StoreError as exc:  # no database there, or one without Krolik's tables
        _say("store_error", exc)
        raise SystemExit(1) from None


def _say(event: str, exc: Exception) -> None:
    """A command's failure in one line: words for a person, a log line for a machine."""
    if sys.stderr.isatty():
        typer.echo(f"error: {exc}", err=True)
    else:
        log.error(event, error=str(exc))


if __name__ == "__main__":
    main()
