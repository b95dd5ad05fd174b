"""Server-Sent Events: follow one task to its end, or the changes of many.

A task's stream is its timeline (``krolik/results/timeline.py``): what happened before
the client connected comes first, then each change as the watch sees it, and the stream
ends after ``finished``. Event ids come from the stored record, so a client reconnecting
with ``Last-Event-ID`` gets exactly the events after that one. ``GET /events`` streams
the changes of every task of a queue or name from the moment it connects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from krolik.api.auth import ReadAccess
from krolik.api.deps import StoreDep, api_of, settings_of
from krolik.api.errors import GUARDED_RESPONSES, BadRequest
from krolik.api.routes.tasks import ERRORS, TaskId
from krolik.api.schemas import NAME_PATTERN, QUEUE_PATTERN, TaskOut
from krolik.errors import TaskNotFound
from krolik.results.timeline import (
    FINISHED,
    EventKey,
    TaskEvent,
    after,
    latest_kind,
    parse_event_id,
    timeline,
)
from krolik.store.records import Attempt, Task

router = APIRouter(tags=["events"], responses=GUARDED_RESPONSES)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Not cached, and not buffered by nginx on the way."""
EVENT_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    """One event in the ``text/event-stream`` format (the data as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = orjson.dumps(data, option=orjson.OPT_UTC_Z)
    return f"{head}event: {event}\ndata: ".encode() + body + b"\n\n"


KEEPALIVE = b": keepalive\n\n"


def _last_seen(header: str | None) -> EventKey | None:
    if header is None or not header.strip():
        return None
    try:
        return parse_event_id(header)
    except ValueError:
        raise BadRequest(
            "Last-Event-ID is not an event id of this stream; send back the id of the "
            "last event received"
        ) from None


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": EVENT_STREAM, "description": "The task's events"},
        400: ERRORS[400],
        404: ERRORS[404],
    },
    summary="Follow a task to its end (Server-Sent Events)",
    description="Events `queued`, `started` (attempt, worker), `progress`, "
    "`retry_scheduled` and `finished` (the task's record), each with an id; the stream "
    "ends after `finished`. Reconnect with `Last-Event-ID` to get only what came after.",
)
async def task_events(
    task_id: TaskId,
    request: Request,
    store: StoreDep,
    _: ReadAccess,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> StreamingResponse:
    last = _last_seen(last_event_id)
    watch = api_of(request).watch
    keepalive = settings_of(request).results.keepalive_seconds
    watching = watch.watching(task_id)
    watcher = watching.__enter__()  # before the first read: no change slips between
    try:
        task = await store.get(task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} does not exist")
    except BaseException:
        watching.__exit__(None, None, None)
        raise

    async def stream() -> AsyncIterator[bytes]:
        nonlocal last
        attempts: list[Attempt] = []
        seen: tuple[int, str] | None = None
        current: Task | None = task
        try:
            while True:
                if current is not None:
                    state = (current.run_token, current.status.value)
                    if state != seen:  # a run began or ended: read its record
                        attempts, seen = await store.attempts_of(task_id), state
                    events = timeline(current, attempts)
                    for event in after(events, last):
                        yield _encode(event, current)
                        last = event.key
                    if events[-1].kind == FINISHED and last is not None and last >= events[-1].key:
                        return  # the end was sent, now or before a reconnect
                current = await watcher.next(keepalive)
                if current is None:
                    yield KEEPALIVE
        finally:
            watching.__exit__(None, None, None)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=STREAM_HEADERS)


def _encode(event: TaskEvent, task: Task) -> bytes:
    data = event.data
    if event.kind == FINISHED:
        data = {**data, "task": TaskOut.of(task).model_dump(mode="json")}
    return sse(event.kind, data, event.id)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": EVENT_STREAM, "description": "Changes of tasks"}},
    summary="Follow the changes of many tasks (Server-Sent Events)",
    description="From the moment of connecting, an event for each change of a task of "
    "`queue` (and `name`, when given): its kind (`queued`, `started`, `progress`, "
    "`retry_scheduled`, `finished`) and the task's record. Changes a slow client could not "
    "take are dropped, oldest first, and counted in a `lagged` event.",
)
async def all_events(
    request: Request,
    _: ReadAccess,
    queue: Annotated[str | None, Query(pattern=QUEUE_PATTERN)] = None,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
) -> StreamingResponse:
    watch = api_of(request).watch
    keepalive = settings_of(request).results.keepalive_seconds

    async def stream() -> AsyncIterator[bytes]:
        with watch.streaming(queue, name) as changes:
            yield b": following\n\n"
            reported = 0
            while True:
                try:
                    async with asyncio.timeout(keepalive):
                        task = await changes.changes.get()
                except TimeoutError:
                    yield KEEPALIVE
                    continue
                if changes.dropped > reported:
                    yield sse("lagged", {"dropped": changes.dropped - reported})
                    reported = changes.dropped
                kind = latest_kind(task)
                yield sse(kind, {"task": TaskOut.of(task).model_dump(mode="json")})

    return StreamingResponse(stream(), media_type="text/event-stream", headers=STREAM_HEADERS)
