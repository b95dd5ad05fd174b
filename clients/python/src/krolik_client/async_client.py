"""``AsyncClient``: the API from asyncio code, typed by the handlers it submits to."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Concatenate, Literal, Self, TypeVar, Unpack, overload

import httpx

from krolik_client import calls
from krolik_client.calls import Call
from krolik_client.connection import Connection
from krolik_client.errors import ServerUnavailable, WaitTimeout, error_of
from krolik_client.events import (
    Change,
    EventStreamParser,
    Finished,
    ServerSentEvent,
    TaskEvent,
    change_event,
    task_event,
)
from krolik_client.handlers import handler_types
from krolik_client.handles import AsyncTaskHandle
from krolik_client.models import (
    Attempt,
    Delivery,
    Health,
    QueueDetail,
    QueueStats,
    Schedule,
    ScheduleTickPage,
    Task,
    TaskDetail,
    TaskRef,
    TaskStatus,
    Worker,
    id_of,
)
from krolik_client.queues import QueueChanges, queue_changes
from krolik_client.retrying import Retries
from krolik_client.scheduling import ScheduleChanges, schedule_body, schedule_changes
from krolik_client.submission import ScheduledTaskOptions, SubmitOptions, seconds

T = TypeVar("T")
PayloadT = TypeVar("PayloadT")
ResultT = TypeVar("ResultT")


class AsyncClient:
    """The API of a Krolik server (``url``, else ``KROLIK_URL``, else ``krolik dev``'s
    address), authenticated with ``api_key`` (else ``KROLIK_API_KEY``).

    ``retries`` is how many times a request is sent again after a 429, a 503 or a
    dropped connection (never in a way that could do anything twice); ``transport``
    replaces httpx's own (``httpx.ASGITransport(app=...)`` reaches an app in-process)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int | Retries = 3,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._connection = Connection.of(url, api_key, timeout, headers)
        self._retries = Retries.of(retries)
        self._http = httpx.AsyncClient(
            base_url=self._connection.base_url,
            headers=self._connection.headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def url(self) -> str:
        return self._connection.base_url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- tasks -----------------------------------------------------------------------
    @overload
    async def submit(
        self,
        task: Callable[Concatenate[PayloadT, ...], Awaitable[ResultT]],
        payload: PayloadT,
        /,
        *,
        wait: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> AsyncTaskHandle[ResultT]: ...

    @overload
    async def submit(
        self,
        task: Callable[Concatenate[PayloadT, ...], ResultT],
        payload: PayloadT,
        /,
        *,
        wait: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> AsyncTaskHandle[ResultT]: ...

    @overload
    async def submit(
        self,
        task: str,
        payload: Any = None,
        /,
        *,
        wait: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> AsyncTaskHandle[Any]: ...

    async def submit(
        self,
        task: Callable[..., Any] | str,
        payload: Any = None,
        /,
        *,
        wait: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> AsyncTaskHandle[Any]:
        """Create a task of handler ``task`` (its function, or its name) with ``payload``.

        With ``wait``, the server answers once the task finished or after that many
        seconds, whichever comes first. A submit is retried safely: it carries the
        caller's ``idempotency_key`` or one made for it."""
        types = handler_types(task)
        submitted = await self._send(calls.submit(types, payload, options, wait))
        return AsyncTaskHandle(
            self, submitted.task.id, types, task=submitted.task, created=submitted.created
        )

    @overload
    async def submit_many(
        self,
        task: Callable[Concatenate[PayloadT, ...], Awaitable[ResultT]],
        payloads: Sequence[PayloadT],
        /,
        **options: Unpack[SubmitOptions],
    ) -> builtins.list[AsyncTaskHandle[ResultT]]: ...

    @overload
    async def submit_many(
        self,
        task: Callable[Concatenate[PayloadT, ...], ResultT],
        payloads: Sequence[PayloadT],
        /,
        **options: Unpack[SubmitOptions],
    ) -> builtins.list[AsyncTaskHandle[ResultT]]: ...

    @overload
    async def submit_many(
        self, task: str, payloads: Sequence[Any], /, **options: Unpack[SubmitOptions]
    ) -> builtins.list[AsyncTaskHandle[Any]]: ...

    async def submit_many(
        self,
        task: Callable[..., Any] | str,
        payloads: Sequence[Any],
        /,
        **options: Unpack[SubmitOptions],
    ) -> builtins.list[AsyncTaskHandle[Any]]:
        """Create one task per payload, all in one transaction (``POST /tasks/batch``),
        each with ``options`` and an idempotency key of its own."""
        if "idempotency_key" in options:
            raise TypeError("submit_many makes a key per task: give no idempotency_key")
        types = handler_types(task)
        batch = await self._send(calls.submit_many(types, payloads, options))
        return [
            AsyncTaskHandle(self, task_id, types, created=created)
            for task_id, created in zip(batch.task_ids, batch.created, strict=True)
        ]

    @overload
    def handle(
        self, task: Callable[Concatenate[Any, ...], Awaitable[ResultT]], task_id: int, /
    ) -> AsyncTaskHandle[ResultT]: ...

    @overload
    def handle(
        self, task: Callable[Concatenate[Any, ...], ResultT], task_id: int, /
    ) -> AsyncTaskHandle[ResultT]: ...

    @overload
    def handle(self, task: str, task_id: int, /) -> AsyncTaskHandle[Any]: ...

    def handle(self, task: Callable[..., Any] | str, task_id: int, /) -> AsyncTaskHandle[Any]:
        """A handle on a task submitted before (by another process, say), typed by its
        handler."""
        return AsyncTaskHandle(self, task_id, handler_types(task))

    async def get(self, task: TaskRef, *, wait: float | None = None) -> TaskDetail:
        """The task's record; with ``wait``, once it finished or after that many seconds."""
        return await self._send(calls.get_task(id_of(task), wait))

    async def wait(self, task: TaskRef, timeout: float | timedelta | None = None) -> TaskDetail:
        """The task's final record, waited for on the server (as many requests as the
        server's longest wait needs); ``WaitTimeout`` after ``timeout`` seconds."""
        task_id = id_of(task)
        limit = None if timeout is None else seconds(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            started = time.monotonic()
            remaining = calls.MAX_WAIT if deadline is None else deadline - started
            record = await self._send(calls.get_task(task_id, max(remaining, 0.0)))
            if record.status.is_final:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(record, limit or 0.0)
            pause = started + calls.MIN_WAIT_ROUND - time.monotonic()
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
            await asyncio.sleep(max(0.0, pause))

    async def list(
        self,
        *,
        status: TaskStatus | str | None = None,
        name: str | None = None,
        queue: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Task]:
        """Every task matching the filters, newest first, read a page at a time."""
        cursor: str | None = None
        while True:
            call = calls.list_tasks(
                status=status, name=name, queue=queue, cursor=cursor, limit=page_size
            )
            page = await self._send(call)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def attempts(self, task: TaskRef) -> builtins.list[Attempt]:
        return (await self._send(calls.attempts(id_of(task)))).items

    async def deliveries(self, task: TaskRef) -> builtins.list[Delivery]:
        return (await self._send(calls.deliveries(id_of(task)))).items

    async def cancel(self, task: TaskRef) -> Task:
        """Cancel a pending task, or ask a running one to stop (``cancel_requested``)."""
        return await self._send(calls.cancel(id_of(task)))

    async def retry(self, task: TaskRef) -> Task:
        """Send a failed, cancelled or expired task back to pending with fresh attempts."""
        return await self._send(calls.retry(id_of(task)))

    async def events(
        self, task: TaskRef, *, last_event_id: str | None = None
    ) -> AsyncGenerator[TaskEvent, None]:
        """The task's events from the start (or after ``last_event_id``), up to its
        ``Finished``; a dropped stream is taken up again where it was."""
        url = calls.task_events_url(id_of(task))
        async with contextlib.aclosing(self._stream(url, {}, last_event_id)) as stream:
            async for sent in stream:
                event = task_event(sent)
                yield event
                if isinstance(event, Finished):
                    return

    async def changes(
        self, *, queue: str | None = None, name: str | None = None
    ) -> AsyncGenerator[Change, None]:
        """The changes of every task of ``queue`` (and ``name``) from now on; endless."""
        params = calls.changes_params(queue, name)
        async with contextlib.aclosing(self._stream(calls.changes_url(), params)) as stream:
            async for sent in stream:
                yield change_event(sent)

    # -- queues and workers -------------------------------------------------------------
    async def queues(self) -> builtins.list[QueueStats]:
        return await self._send(calls.queues())

    async def queue(self, name: str) -> QueueDetail:
        return await self._send(calls.queue(name))

    async def change_queue(self, name: str, **changes: Unpack[QueueChanges]) -> QueueDetail:
        """Set the given limits (None lifts one); the others stay as they are."""
        return await self._send(calls.change_queue(name, queue_changes(changes)))

    async def pause_queue(self, name: str) -> QueueDetail:
        return await self._send(calls.pause_queue(name))

    async def resume_queue(self, name: str) -> QueueDetail:
        return await self._send(calls.resume_queue(name))

    async def workers(self, *, include_dead: bool = False) -> builtins.list[Worker]:
        return await self._send(calls.workers(include_dead))

    # -- schedules ------------------------------------------------------------------------
    async def create_schedule(
        self,
        name: str,
        task: Callable[..., Any] | str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        tz: str = "UTC",
        catch_up: Literal["skip", "once", "all"] = "once",
        paused: bool = False,
        **options: Unpack[ScheduledTaskOptions],
    ) -> Schedule:
        """A schedule making a task of ``task`` with ``payload`` at each tick of ``cron``
        (in ``tz``) or ``every`` seconds."""
        body = schedule_body(
            name, handler_types(task), payload, cron, every, tz, catch_up, paused, options
        )
        return await self._send(calls.create_schedule(body))

    async def schedules(self) -> builtins.list[Schedule]:
        return await self._send(calls.schedules())

    async def schedule(self, name: str) -> Schedule:
        return await self._send(calls.schedule(name))

    async def change_schedule(self, name: str, **changes: Unpack[ScheduleChanges]) -> Schedule:
        """Change the given fields (``task``/``payload`` replace each tick's task)."""
        return await self._send(calls.change_schedule(name, schedule_changes(changes)))

    async def delete_schedule(self, name: str) -> None:
        await self._send(calls.delete_schedule(name))

    async def pause_schedule(self, name: str) -> Schedule:
        return await self._send(calls.pause_schedule(name))

    async def resume_schedule(self, name: str) -> Schedule:
        return await self._send(calls.resume_schedule(name))

    async def schedule_ticks(
        self, name: str, *, before: datetime | None = None, limit: int | None = None
    ) -> ScheduleTickPage:
        """The schedule's ticks and the tasks they made, newest first (``next_before``
        continues)."""
        return await self._send(calls.schedule_ticks(name, before, limit))

    # -- operations ---------------------------------------------------------------------
    async def health(self) -> Health:
        return await self._send(calls.health())

    async def ready(self) -> Health:
        """Whether the server's store and broker answer (``status`` ``ok``, or not)."""
        return await self._send(calls.ready())

    async def metrics(self) -> str:
        """The Prometheus exposition of the server's process."""
        return await self._send(calls.metrics())

    # -- sending ------------------------------------------------------------------------
    async def _send(self, call: Call[T]) -> T:
        request = self._connection.request(self._http, call)
        tries = 0
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._retries.after_error(tries, exc, call.replayable)
                if delay is None:
                    raise ServerUnavailable(
                        f"{call.method} {call.url} got no answer: {exc!r}"
                    ) from exc
            else:
                if response.status_code in call.accept:
                    return call.answer(response)
                delay = self._retries.after_response(tries, response)
                if delay is None:
                    return call.answer(response)
            tries += 1
            await asyncio.sleep(delay)

    async def _stream(
        self, url: str, params: Mapping[str, Any], last_event_id: str | None = None
    ) -> AsyncGenerator[ServerSentEvent, None]:
        """The events of a stream, reconnecting with ``Last-Event-ID`` when it drops."""
        tries = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                async with self._http.stream(
                    "GET",
                    url,
                    params=dict(params) or None,
                    headers=headers,
                    timeout=self._connection.stream_timeout(),
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        delay = self._retries.after_response(tries, response)
                        if delay is None:
                            raise error_of(response)
                    else:
                        parser = EventStreamParser()
                        async for line in response.aiter_lines():
                            sent = parser.feed(line)
                            if sent is None:
                                continue
                            tries = 0
                            last_event_id = sent.id or last_event_id
                            yield sent
                        # The server ended the stream before its end: follow on.
                        delay = self._retries.after_stream_end(tries)
                        if delay is None:
                            raise ServerUnavailable(f"GET {url} keeps ending early")
            except httpx.TransportError as exc:
                delay = self._retries.after_error(tries, exc, replayable=True)
                if delay is None:
                    raise ServerUnavailable(f"GET {url} dropped: {exc!r}") from exc
            tries += 1
            await asyncio.sleep(delay)
