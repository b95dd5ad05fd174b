"""The command line for people: submit, look at and steer tasks through the HTTP API.

These commands talk to a running Krolik (``--url``, ``KROLIK_URL``; ``--api-key``,
``KROLIK_API_KEY``) through the Python client (``krolik_client``, in ``clients/python``):
tables for people (rich), ``--json`` for scripts. ``krolik submit --wait`` ends with the
task: exit 0 done, 1 failed, 2 cancelled or expired, 3 the wait timed out; 4 is a request
the API refused or could not be sent.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from krolik_client import Client

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_FAILED, EXIT_CANCELLED, EXIT_WAIT_TIMED_OUT, EXIT_REQUEST = 1, 2, 3, 4
ENDED_CODES = {"done": 0, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED, "expired": 2}

UrlOption = Annotated[
    str, typer.Option("--url", envvar="KROLIK_URL", help="The Krolik API to talk to.")
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="KROLIK_API_KEY", help="An API key, if keys are on."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON for scripts, not a table.")]
TaskIdArgument = Annotated[int, typer.Argument(help="The task's id.")]

tasks_cli = typer.Typer(help="List, show, cancel and retry tasks (through the API).")


@contextmanager
def client(url: str, api_key: str | None) -> Iterator[Client]:
    """The client, with the API's refusals and unreachable servers as one line, exit 4."""
    try:
        from krolik_client import Client, KrolikError
    except ImportError:
        _fail("these commands talk to the API through krolik-client: pip install ./clients/python")
    try:
        with Client(url, api_key=api_key) as the_client:
            yield the_client
    except KrolikError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = EXIT_REQUEST) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _payload(given: str | None) -> Any:
    """JSON on the command line, ``@FILE`` for a file's, ``@-`` for standard input's."""
    if given is None:
        return None
    text = given
    if given.startswith("@"):
        source = given[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {source}: {exc}", param_hint="--payload"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, indent=2))


def _when(stamp: datetime | None) -> str:
    return "-" if stamp is None else stamp.strftime("%Y-%m-%d %H:%M:%S")


def _table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if value is None else str(value) for value in row))
    Console().print(table)


def submit(
    name: Annotated[str, typer.Argument(help="The handler's name.")],
    payload: Annotated[
        str | None, typer.Option(help="The payload: JSON, @FILE or @- (standard input).")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="The queue (the API's default).")] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds before it is due.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher starts first.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Runs before it fails.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Most seconds to wait (--wait).")] = 60.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a task; --wait ends with it: exit 0 done, 1 failed, 2 cancelled, 3 timed out."""
    from krolik_client import WaitTimeout

    options: dict[str, Any] = {
        key: value
        for key, value in {
            "queue": queue,
            "delay": delay,
            "priority": priority,
            "max_attempts": max_attempts,
        }.items()
        if value is not None
    }
    with client(url, api_key) as krolik:
        handle = krolik.submit(name, _payload(payload), **options)
        if not wait:
            task = krolik.get(handle)
            if as_json:
                _print_json(task.model_dump(mode="json"))
            else:
                typer.echo(f"task {task.id} {task.status.value} ({task.name} in {task.queue})")
            return
        try:
            ended = krolik.wait(handle, timeout)
        except WaitTimeout as exc:
            waited = exc.task
            if as_json:
                _print_json(waited.model_dump(mode="json"))
            else:
                typer.echo(f"task {waited.id} still {waited.status.value} after {timeout:g}s")
            raise SystemExit(EXIT_WAIT_TIMED_OUT) from None
    if as_json:
        _print_json(ended.model_dump(mode="json"))
    else:
        said = json.dumps(ended.result) if ended.status.value == "done" else ended.error
        typer.echo(f"task {ended.id} {ended.status.value}: {said}")
    raise SystemExit(ENDED_CODES.get(ended.status.value, EXIT_FAILED))


@tasks_cli.command("ls")
def tasks_ls(
    status: Annotated[str | None, typer.Option(help="pending, processing, done, ...")] = None,
    name: Annotated[str | None, typer.Option(help="The handler's name.")] = None,
    queue: Annotated[str | None, typer.Option(help="The queue.")] = None,
    limit: Annotated[int, typer.Option(help="Most tasks shown, newest first.")] = 20,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """The newest tasks, filtered."""
    with client(url, api_key) as krolik:
        found = []
        for task in krolik.list(status=status, name=name, queue=queue, page_size=limit):
            found.append(task)
            if len(found) >= limit:
                break
    if as_json:
        _print_json([task.model_dump(mode="json") for task in found])
        return
    _table(
        None,
        ["id", "name", "queue", "status", "attempts", "created", "finished"],
        [
            [
                t.id,
                t.name,
                t.queue,
                t.status.value,
                t.attempts,
                _when(t.created_at),
                _when(t.finished_at),
            ]
            for t in found
        ],
    )


@tasks_cli.command("show")
def tasks_show(
    task_id: TaskIdArgument,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A task with its payload, result or error, why it waits, and its attempts."""
    with client(url, api_key) as krolik:
        task = krolik.get(task_id)
        attempts = krolik.attempts(task_id)
    if as_json:
        _print_json(
            {
                **task.model_dump(mode="json"),
                "attempt_list": [a.model_dump(mode="json") for a in attempts],
            }
        )
        return
    fields = [
        ("task", f"{task.id} {task.name} in {task.queue}"),
        ("status", task.status.value),
        ("attempts", f"{task.attempts} of {task.max_attempts or '-'}"),
        ("payload", json.dumps(task.payload)),
        ("result", json.dumps(task.result) if task.result is not None else None),
        ("error", task.error),
        ("waiting", task.waiting_reason),
        ("created", _when(task.created_at)),
        ("finished", _when(task.finished_at)),
    ]
    for label, value in fields:
        if value is not None:
            typer.echo(f"{label:<9} {value}")
    if attempts:
        _table(
            "attempts",
            ["attempt", "worker", "started", "seconds", "outcome", "error"],
            [
                [
                    a.attempt,
                    a.worker_id,
                    _when(a.started_at),
                    a.duration_seconds,
                    a.outcome,
                    a.error,
                ]
                for a in attempts
            ],
        )


@tasks_cli.command("cancel")
def tasks_cancel(
    task_id: TaskIdArgument,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a pending task, or ask a running one to stop."""
    with client(url, api_key) as krolik:
        task = krolik.cancel(task_id)
    if as_json:
        _print_json(task.model_dump(mode="json"))
    elif task.cancel_requested and task.status.value == "processing":
        typer.echo(f"task {task.id} asked to stop")
    else:
        typer.echo(f"task {task.id} {task.status.value}")


@tasks_cli.command("retry")
def tasks_retry(
    task_id: TaskIdArgument,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a failed, cancelled or expired task back to pending, its attempts afresh."""
    with client(url, api_key) as krolik:
        task = krolik.retry(task_id)
    if as_json:
        _print_json(task.model_dump(mode="json"))
    else:
        typer.echo(f"task {task.id} {task.status.value}")


def workers(
    url: UrlOption = DEFAULT_URL, api_key: KeyOption = None, as_json: JsonOption = False
) -> None:
    """The workers alive: host, queues, handlers, slots in use, last seen."""
    with client(url, api_key) as krolik:
        found = krolik.workers()
    if as_json:
        _print_json([worker.model_dump(mode="json") for worker in found])
        return
    rows = [
        [
            w.id,
            w.host,
            w.pid,
            ", ".join(w.queues),
            w.concurrency,
            w.running,
            _when(w.last_seen_at),
        ]
        for w in found
    ]
    _table(None, ["worker", "host", "pid", "queues", "slots", "running", "last seen"], rows)


def tail(
    task_id: Annotated[
        int | None, typer.Option("--task", help="Follow one task to its end.")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue's tasks.")] = None,
    name: Annotated[str | None, typer.Option(help="Only this handler's tasks.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow every task's changes (of a queue, a handler), or one task's events (--task)."""
    with client(url, api_key) as krolik:
        stream = (
            krolik.events(task_id)
            if task_id is not None
            else krolik.changes(queue=queue, name=name)
        )
        try:
            for event in stream:
                if as_json:
                    typer.echo(json.dumps(event.model_dump(mode="json"), default=str))
                    continue
                task = getattr(event, "task", None)
                if task is not None:
                    typer.echo(f"{event.kind:<10} task {task.id} {task.name} {task.status.value}")
                else:
                    typer.echo(
                        f"{event.kind:<10} {json.dumps(event.model_dump(mode='json'), default=str)}"
                    )
        except KeyboardInterrupt:
            return
