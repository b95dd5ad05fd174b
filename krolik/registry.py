"""Task handlers: the ``task`` decorator and the name -> handler registry."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from krolik.errors import ConfigurationError, UnknownHandler
from krolik.flow import PRIORITY_RANGE
from krolik.handler_types import dump_result, load_payload

JSON = Any
HandlerFunc = Callable[..., Any]
F = TypeVar("F", bound=HandlerFunc)


ProgressSink = Callable[[float | None, str | None], None]

MAX_PROGRESS_MESSAGE = 1000
TASK_NAME_ATTRIBUTE = "__krolik_task_name__"
"""Set on each registered function: the name a client submits it by (``krolik_client``)."""


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may want to know about the run it is in, and how it says how far
    it got."""

    task_id: int
    name: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    progress_sink: ProgressSink | None = field(default=None, repr=False, compare=False)

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report how far the run got (``fraction`` from 0 to 1) and what it does now.

        It returns at once, from async handlers and from plain ones (threads) alike; the
        worker writes at most one report a second per task, the latest winning, so a
        handler may call it as often as it likes."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be from 0 to 1, not {fraction!r}")
        if message is not None:
            message = str(message)[:MAX_PROGRESS_MESSAGE]
        if self.progress_sink is not None:
            self.progress_sink(None if fraction is None else float(fraction), message)


@dataclass(frozen=True, slots=True)
class CodeSchedule:
    """A handler's own timetable (``@task(cron=...)`` or ``@task(every=...)``): every
    worker that has the handler writes it to the store, named after the handler."""

    cron: str | None = None
    every_seconds: float | None = None
    tz: str = "UTC"
    payload: JSON = None
    queue: str | None = None
    catch_up: str = "once"


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    func: HandlerFunc
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    wants_context: bool = False
    is_async: bool = True
    schedule: CodeSchedule | None = None
    priority: int | None = None
    """Its new tasks' priority when a submit gives none (written to ``krolik_handlers``
    by the workers that have it)."""

    async def run(self, payload: JSON, context: TaskContext) -> JSON:
        """Run the handler; a plain function runs in a thread of its own. The payload
        goes in as the handler's annotation declares it (a pydantic model, a dataclass,
        a TypedDict: ``PayloadRejected`` if it does not match), a model comes out as JSON."""
        kwargs = {"context": context} if self.wants_context else {}
        given = load_payload(self.func, self.name, payload)
        if self.is_async:
            result: Awaitable[JSON] = self.func(given, **kwargs)
            return dump_result(await result)
        return dump_result(
            await run_in_daemon_thread(functools.partial(self.func, given, **kwargs))
        )


async def run_in_daemon_thread(call: Callable[[], Any]) -> Any:
    """Run ``call`` in a daemon thread and await its result.

    A thread cannot be cancelled. A daemon thread at least does not keep a worker
    alive after it released the task on shutdown, as a thread of the default pool
    would (the interpreter waits for those at exit). The worker's slots bound how
    many such threads run at once.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        try:
            value = context.run(call)
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, value)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=target, name="krolik-handler", daemon=True).start()
    return await future


@dataclass
class Registry:
    """Maps task names to handlers. Workers look handlers up here by name."""

    handlers: dict[str, Handler] = field(default_factory=dict)

    @overload
    def task(self, func: F, /) -> F: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        payload: JSON = None,
        queue: str | None = None,
        catch_up: str = "once",
    ) -> Callable[[F], F]: ...

    def task(
        self,
        func: HandlerFunc | None = None,
        /,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        payload: JSON = None,
        queue: str | None = None,
        catch_up: str = "once",
    ) -> Any:
        """Register ``func`` as a handler; usable as ``@task`` or ``@task(name=...)``.

        With ``cron`` (in time zone ``tz``) or ``every`` (seconds), it is also run on that
        timetable with ``payload`` (on ``queue``), each tick exactly once whatever the
        number of workers; ``catch_up`` says what runs for ticks missed while no worker
        ran: ``skip``, ``once`` or ``all``. ``priority`` is the priority of its tasks
        whose submit gives none (higher starts first; the queue's default comes next)."""
        schedule = None
        if cron is not None or every is not None:
            schedule = CodeSchedule(cron, every, tz, payload, queue, catch_up)

        def register(f: F) -> F:
            self.add(
                f,
                name=name,
                max_attempts=max_attempts,
                timeout=timeout,
                priority=priority,
                schedule=schedule,
            )
            return f

        return register(func) if func is not None else register

    def add(
        self,
        func: HandlerFunc,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        schedule: CodeSchedule | None = None,
    ) -> Handler:
        task_name = name or func.__name__
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"max_attempts of {task_name!r} must be at least 1")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout of {task_name!r} must be positive")
        if priority is not None and not (PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
            low, high = PRIORITY_RANGE
            raise ConfigurationError(f"priority of {task_name!r} must be from {low} to {high}")
        if schedule is not None:
            _check_schedule(task_name, schedule)
        existing = self.handlers.get(task_name)
        if existing is not None and existing.func is not func:
            raise ConfigurationError(f"a handler named {task_name!r} is already registered")
        handler = Handler(
            name=task_name,
            func=func,
            max_attempts=max_attempts,
            timeout_seconds=timeout,
            wants_context="context" in inspect.signature(func).parameters,
            is_async=_is_async(func),
            schedule=schedule,
            priority=priority,
        )
        self.handlers[task_name] = handler
        with contextlib.suppress(AttributeError):  # a bound method takes no attributes
            setattr(func, TASK_NAME_ATTRIBUTE, task_name)
        return handler

    def get(self, name: str) -> Handler:
        try:
            return self.handlers[name]
        except KeyError:
            raise UnknownHandler(f"no handler is registered under the name {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.handlers

    def merged(self, other: Registry) -> Registry:
        """A registry holding both; ``other`` wins on a name clash."""
        return Registry({**self.handlers, **other.handlers})


def _check_schedule(task_name: str, schedule: CodeSchedule) -> None:
    """A handler's timetable is checked when it is declared, not at a worker's start."""
    from pydantic import ValidationError

    from krolik.schedules.spec import ScheduledTask
    from krolik.schedules.timing import CatchUp, InvalidSchedule, Timing

    try:
        Timing(cron=schedule.cron, every_seconds=schedule.every_seconds, tz=schedule.tz)
        CatchUp(schedule.catch_up)
        ScheduledTask(payload=schedule.payload, queue=schedule.queue)
    except (InvalidSchedule, ValueError, ValidationError) as exc:
        raise ConfigurationError(f"the schedule of {task_name!r} is not valid: {exc}") from None


def _is_async(func: HandlerFunc) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    call = type(func).__call__ if not inspect.isfunction(func) else None
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


default_registry = Registry()
task = default_registry.task
