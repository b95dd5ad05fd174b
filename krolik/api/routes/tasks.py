"""Tasks: create (seed-compatible), read, list, cancel, retry."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from krolik.api.deps import ObserverDep, RelayDep, SettingsDep, StoreDep
from krolik.api.errors import BadRequest
from krolik.api.request_id import current_request_id
from krolik.api.schemas import (
    MAX_ID,
    NAME_PATTERN,
    QUEUE_PATTERN,
    Problem,
    TaskCreate,
    TaskCreated,
    TaskDetail,
    TaskOut,
    TaskPage,
)
from krolik.builtin_tasks import DEFAULT_TASK_NAME
from krolik.errors import TaskNotFound
from krolik.states import TaskStatus
from krolik.store.base import NewTask, TaskFilter

router = APIRouter(prefix="/tasks", tags=["tasks"])

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id.")]
ERRORS = {
    404: {"model": Problem, "description": "No such task"},
    409: {"model": Problem, "description": "The task's state does not allow it"},
    503: {"model": Problem, "description": "The store is unavailable"},
}


def encode_cursor(task_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        value = int(number)
        if prefix != "id" or not 0 < value <= MAX_ID:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("the cursor is not valid; use next_cursor of a previous page") from None
    return value


async def _create(
    body: TaskCreate,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    relay: RelayDep,
    observer: ObserverDep,
) -> TaskCreated:
    new = NewTask(
        name=body.name or DEFAULT_TASK_NAME,
        queue=body.queue or settings.default_queue,
        payload=body.payload,
        max_attempts=body.max_attempts,
        timeout_seconds=body.timeout_seconds,
        run_at=body.run_at,
        delay_seconds=body.delay_seconds,
        idempotency_key=body.idempotency_key,
        request_id=current_request_id.get(),
    )
    [enqueued] = await store.enqueue([new])
    if enqueued.created:
        observer.task_submitted(enqueued.task)
        if relay is not None:
            relay.wake()
    else:
        response.status_code = status.HTTP_200_OK
    return TaskCreated.of(enqueued.task)


router.add_api_route(
    "/",
    _create,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=TaskCreated,
    summary="Create a task",
    description="201 with the new task; 200 with the existing one when the idempotency key "
    "was seen before.",
    responses={503: ERRORS[503]},
)
router.add_api_route(
    "",
    _create,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=TaskCreated,
    include_in_schema=False,
)


@router.get("", response_model=TaskPage, summary="List tasks, newest first")
async def list_tasks(
    store: StoreDep,
    settings: SettingsDep,
    task_status: Annotated[TaskStatus | None, Query(alias="status")] = None,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    queue: Annotated[str | None, Query(pattern=QUEUE_PATTERN)] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> TaskPage:
    page_size = limit or settings.api.default_page_size
    before = decode_cursor(cursor) if cursor else None
    found = await store.list_tasks(
        TaskFilter(status=task_status, name=name, queue=queue),
        before_id=before,
        limit=page_size + 1,
    )
    items = found[:page_size]
    next_cursor = encode_cursor(items[-1].id) if len(found) > page_size else None
    return TaskPage(items=[TaskOut.of(task) for task in items], next_cursor=next_cursor)


@router.get(
    "/{task_id}", response_model=TaskDetail, responses={404: ERRORS[404]}, summary="Read a task"
)
async def get_task(task_id: TaskId, store: StoreDep) -> TaskDetail:
    task = await store.get(task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    return TaskDetail.of(task)


@router.post(
    "/{task_id}/cancel",
    response_model=TaskOut,
    responses={404: ERRORS[404], 409: ERRORS[409]},
    summary="Cancel a task",
    description="A pending task is cancelled at once and never runs; a running one "
    "is asked to stop (cancel_requested) and becomes cancelled when it does.",
)
async def cancel_task(task_id: TaskId, store: StoreDep) -> TaskOut:
    return TaskOut.of(await store.cancel(task_id))


@router.post(
    "/{task_id}/retry",
    response_model=TaskOut,
    responses={404: ERRORS[404], 409: ERRORS[409]},
    summary="Retry a dead task",
    description="A failed or cancelled task goes back to pending with fresh attempts.",
)
async def retry_task(task_id: TaskId, store: StoreDep, relay: RelayDep) -> TaskOut:
    task = await store.retry(task_id)
    if relay is not None:
        relay.wake()
    return TaskOut.of(task)
