"""Structured logs: one JSON object per line, or readable lines in a terminal.

Everything a process writes to stderr takes the same way out: structlog's own loggers
(Krolik's, the hot path: no ``logging`` record is built for them) and, through a handler
on the root logger, the standard library's (aio-pika, aiormq, uvicorn, SQLAlchemy,
asyncio), warnings and uncaught exceptions. Both render with the same processors, so a
line has ``event``, ``level``, ``timestamp`` and ``logger`` whichever way it came, and a
traceback is its ``exception`` key, never lines of its own: during a RabbitMQ outage,
when most lines come from the AMQP client, the stream stays parseable.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TextIO

import orjson
import structlog

current_request_id: ContextVar[str | None] = ContextVar("krolik_request_id", default=None)
"""The id of the HTTP request being served, if any (set by the API's middleware)."""

THIRD_PARTY_LEVEL = logging.WARNING
"""The lowest level logged for libraries. Below it they narrate rather than warn: aio-pika
and aiormq log every reconnect plan at INFO and every frame at DEBUG, and SQLAlchemy echoes
each statement once its logger allows INFO (its ``echo`` defers to the logger's level)."""

OWN_LEVEL_LOGGERS = ("krolik", "uvicorn")
"""Standard library loggers that follow the configured level all the way down: Krolik's,
and uvicorn's (its INFO lines are the API's life cycle: started, serving, shutting down;
access lines stay off with ``access_log=False``)."""

_HANDLER_NAME = "krolik"
"""Names Krolik's handler on the root logger, so configuring again replaces it."""


def get_logger(name: str) -> Any:
    """A structlog logger; its lines carry ``logger``: ``name``, as the stdlib's lines do."""
    return structlog.get_logger(name)


_uncaught = get_logger("krolik.uncaught")


def add_request_id(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: the current request's id on every line logged while serving it.

    Cheaper per request than binding structlog's context variables.
    """
    request_id = current_request_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def configure_logging(*, level: str = "INFO", json: bool | None = None) -> None:
    """Set up the process's logging once (called by the CLI, never at import).

    Calling it again reconfigures: the previous handler is replaced, never doubled.
    """
    render_json = (not sys.stderr.isatty()) if json is None else json
    threshold = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendering: list[Any] = (
        [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_line),
        ]
        if render_json
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_NamedWriterFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(shared, rendering, threshold)
    logging.captureWarnings(True)
    _route_uncaught_exceptions()


class _NamedWriter(structlog.WriteLogger):
    """structlog's fast writer (one write per line, under one lock per file) with the name
    it was asked for, which ``add_logger_name`` reads as a stdlib logger's."""

    def __init__(self, file: TextIO, name: str = "krolik") -> None:
        super().__init__(file)
        self.name = name


class _NamedWriterFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriter:
        return _NamedWriter(self._file, str(args[0])) if args else _NamedWriter(self._file)


def _route_standard_logging(shared: list[Any], rendering: list[Any], threshold: int) -> None:
    """The root logger's one handler renders records like structlog's own lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(max(threshold, THIRD_PARTY_LEVEL))
    for name in OWN_LEVEL_LOGGERS:
        logging.getLogger(name).setLevel(threshold)


def _route_uncaught_exceptions() -> None:
    """Crashes are logged lines too, not tracebacks printed by the interpreter.

    ``sys.excepthook`` is always replaced: Typer sets its own as a command starts, and
    that one prints plain (or boxed) tracebacks. The thread and unraisable hooks are
    replaced only while they are Python's own: a runner that installed its own (pytest
    collects thread exceptions to fail the test that raised them) keeps it.
    """
    sys.excepthook = _log_uncaught
    if threading.excepthook in (threading.__excepthook__, _log_thread_crash):
        threading.excepthook = _log_thread_crash
    if sys.unraisablehook in (sys.__unraisablehook__, _log_unraisable):
        sys.unraisablehook = _log_unraisable


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    _uncaught.critical("uncaught_exception", exc_info=(kind, error, traceback))


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):
        return  # as Python's own hook: a thread may end itself so
    _uncaught.error(
        "thread_crashed",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(args: sys.UnraisableHookArgs) -> None:
    """An exception Python could not raise (in ``__del__``, a finalizer, a callback)."""
    where = f"{args.err_msg or 'Exception ignored in'}: {args.object!r}"
    if args.exc_value is None:
        _uncaught.error("unraisable_exception", where=where, error=args.exc_type.__name__)
        return
    _uncaught.error(
        "unraisable_exception",
        where=where,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _json_line(event: Any, **_: Any) -> str:
    """orjson, several times faster than the standard library on every log line."""
    return orjson.dumps(event, default=str).decode()
