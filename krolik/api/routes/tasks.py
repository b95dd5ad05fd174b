"""Tasks: create (seed-compatible), read, list, cancel, retry."""

from __future__ import annotations

import base64
import binascii
import hashlib
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from krolik.access import Scope
from krolik.api.auth import (
    BEARER_SECURITY,
    AdminAccess,
    Principal,
    ReadAccess,
    SubmitAccess,
    authorize,
)
from krolik.api.deps import (
    ReadsDep,
    RelayDep,
    SettingsDep,
    StoreDep,
    api_of,
    node_of,
    settings_of,
    submitter_of,
)
from krolik.api.errors import GUARDED_RESPONSES, BadRequest
from krolik.api.json_body import read_json_body
from krolik.api.schemas import (
    MAX_ID,
    NAME_PATTERN,
    QUEUE_PATTERN,
    AttemptList,
    AttemptOut,
    DeliveryList,
    DeliveryOut,
    Problem,
    TaskBatch,
    TaskBatchCreated,
    TaskCreate,
    TaskCreated,
    TaskDetail,
    TaskOut,
    TaskPage,
    ValidationProblem,
)
from krolik.builtin_tasks import DEFAULT_TASK_NAME
from krolik.errors import TaskNotFound
from krolik.log import current_request_id
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.records import NewTask, TaskFilter, running_attempt
from krolik.tracing import valid_traceparent
from krolik.waiting import waiting_reason

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=GUARDED_RESPONSES)

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not readable, or the cursor is not valid"},
    404: {"model": Problem, "description": "No such task"},
    409: {"model": Problem, "description": "The task's state does not allow it"},
    "409-key": {
        "model": Problem,
        "description": "The idempotency key was used before with a different request body",
    },
    413: {"model": Problem, "description": "The body is larger than APP__API__MAX_PAYLOAD_BYTES"},
    422: {
        "model": ValidationProblem | Problem,
        "description": "The request is not valid (or names a queue not allowed)",
    },
}


def encode_cursor(task_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if not number.isascii() or not number.isdigit():
            raise ValueError(raw)
        value = int(number)
        if prefix != "id" or not 0 < value <= MAX_ID:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("the cursor is not valid; use next_cursor of a previous page") from None
    return value


async def _create(request: Request) -> Response:
    # The hot path, a direct route (krolik/api/direct.py): the key, the body and ``wait``
    # are read by hand, not as FastAPI dependencies; CREATE_OPERATION documents them.
    caller = await authorize(request, Scope.SUBMIT)
    wait = _wait_of(request)
    body = await read_json_body(request, TaskCreate)
    settings = settings_of(request)
    traceparent = valid_traceparent(request.headers.get("traceparent"))
    tracing = api_of(request).tracing
    if tracing is None or traceparent is None:
        new = _new_task(body, settings, caller, traceparent)
        enqueued = await submitter_of(request).submit(new)
    else:
        with tracing.submitting(traceparent) as stored:
            enqueued = await submitter_of(request).submit(_new_task(body, settings, caller, stored))
    task = enqueued.task
    if wait:
        task = await api_of(request).watch.wait_final(task.id, wait) or task
    # Written directly: FastAPI would validate and dump the answer once more.
    return Response(
        TaskCreated.json_of(task),
        status.HTTP_201_CREATED if enqueued.created else status.HTTP_200_OK,
        media_type="application/json",
    )


MAX_WAIT_QUERY = 3600.0


def _wait_of(request: Request) -> float | None:
    """``?wait=`` of a direct route, checked as FastAPI checks the declared one."""
    if not request.scope["query_string"]:  # nearly every submit: no parsing at all
        return None
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    try:
        seconds = float(raw)
        if not 0 <= seconds <= MAX_WAIT_QUERY:
            raise ValueError(raw)
    except ValueError:
        raise RequestValidationError(
            [
                {
                    "type": "wait",
                    "loc": ("query", "wait"),
                    "msg": f"wait must be a number of seconds from 0 to {MAX_WAIT_QUERY:g}",
                    "input": raw,
                }
            ]
        ) from None
    return min(seconds, settings_of(request).results.max_wait_seconds)


@router.post(
    "/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskBatchCreated,
    summary="Create many tasks in one transaction",
    responses={400: ERRORS[400], 409: ERRORS["409-key"], 413: ERRORS[413], 422: ERRORS[422]},
)
async def create_batch(
    body: TaskBatch,
    caller: SubmitAccess,
    request: Request,
) -> TaskBatchCreated:
    settings = settings_of(request)
    traceparent = valid_traceparent(request.headers.get("traceparent"))
    tracing = api_of(request).tracing
    with (
        tracing.submitting(traceparent) if tracing is not None else nullcontext(traceparent)
    ) as stored:
        enqueued = await submitter_of(request).submit_many(
            [_new_task(item, settings, caller, stored) for item in body.tasks]
        )
    return TaskBatchCreated(
        task_ids=[item.task.id for item in enqueued], created=[item.created for item in enqueued]
    )


def request_fingerprint(body: TaskCreate) -> str:
    """What makes two requests with one idempotency key the same request: every field of
    the task, the key itself aside (JSON with sorted keys, so spacing and key order in the
    client's body do not matter)."""
    fields = body.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _new_task(
    body: TaskCreate, settings: Settings, caller: Principal, traceparent: str | None = None
) -> NewTask:
    return NewTask(
        request_hash=request_fingerprint(body) if body.idempotency_key is not None else None,
        name=body.name or DEFAULT_TASK_NAME,
        queue=body.queue or settings.default_queue,
        payload=body.payload,
        max_attempts=body.max_attempts,
        timeout_seconds=body.timeout_seconds,
        run_at=body.run_at,
        delay_seconds=body.delay_seconds,
        idempotency_key=body.idempotency_key,
        request_id=current_request_id.get(),
        created_by=caller.name,
        webhook_url=body.webhook_url,
        traceparent=traceparent,
        expires_at=body.expires_at,
        expires_in_seconds=body.expires_in,
        unique_key=body.derived_unique_key(),
        unique_for_seconds=body.unique_for,
        unique_running=body.unique_running,
        unique_replace=body.on_duplicate == "replace",
        priority=body.priority,
        concurrency_key=body.concurrency_key,
    )


WAIT_DESCRIPTION = (
    "Seconds to wait for the task to finish (done, failed, cancelled or expired) before "
    "answering; "
    "the answer comes as soon as it does, or with its state when the wait ends. "
    "Capped by APP__RESULTS__MAX_WAIT_SECONDS (60 by default)."
)

WaitQuery = Annotated[float | None, Query(ge=0, le=MAX_WAIT_QUERY, description=WAIT_DESCRIPTION)]

CREATE_OPERATION: dict[str, Any] = {
    "parameters": [
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": WAIT_DESCRIPTION,
            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_QUERY},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskCreate"}}},
    },
    "security": BEARER_SECURITY,
}
"""What FastAPI would document for ``_create`` had it declared its body and key."""

router.add_api_route(
    "/",
    _create,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=TaskCreated,
    summary="Create a task",
    description="201 with the new task; 200 with the existing one when the idempotency key "
    "was seen before.",
    responses={
        200: {"model": TaskCreated, "description": "The task of an idempotency key seen before"},
        400: ERRORS[400],
        409: ERRORS["409-key"],
        413: ERRORS[413],
        422: ERRORS[422],
    },
    openapi_extra=CREATE_OPERATION,
)
router.add_api_route(
    "",
    _create,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=TaskCreated,
    include_in_schema=False,
)


DIRECT_ENDPOINTS = (_create,)
"""Served by the edge before FastAPI routes the request."""


@router.get(
    "",
    response_model=TaskPage,
    responses={400: ERRORS[400]},
    summary="List tasks, newest first",
)
async def list_tasks(
    _: ReadAccess,
    reads: ReadsDep,
    settings: SettingsDep,
    task_status: Annotated[TaskStatus | None, Query(alias="status")] = None,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    queue: Annotated[str | None, Query(pattern=QUEUE_PATTERN)] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> TaskPage:
    page_size = limit or settings.api.default_page_size
    before = decode_cursor(cursor) if cursor else None
    found = await reads.list_tasks(
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
async def get_task(
    task_id: TaskId,
    reads: ReadsDep,
    store: StoreDep,
    request: Request,
    _: ReadAccess,
    wait: WaitQuery = None,
) -> TaskDetail:
    if wait:
        seconds = min(wait, settings_of(request).results.max_wait_seconds)
        task = await api_of(request).watch.wait_final(task_id, seconds)
    else:
        task = await reads.get(task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    detail = TaskDetail.of(task)
    if task.status is TaskStatus.PENDING:
        live = await store.list_workers()
        detail.waiting_reason = waiting_reason(task, live, datetime.now(UTC))
    return detail


@router.get(
    "/{task_id}/attempts",
    response_model=AttemptList,
    responses={404: ERRORS[404]},
    summary="Every run of a task",
    description="Each run with its worker, times, outcome, error and traceback, oldest "
    "first; the run in progress, if any, comes last with a null outcome.",
)
async def list_attempts(task_id: TaskId, store: StoreDep, _: ReadAccess) -> AttemptList:
    task = await store.get(task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    ended = await store.attempts_of(task_id)
    if task.status is TaskStatus.PROCESSING:
        ended.append(running_attempt(task))
    return AttemptList(items=[AttemptOut.of(attempt) for attempt in ended])


@router.get(
    "/{task_id}/deliveries",
    response_model=DeliveryList,
    responses={404: ERRORS[404]},
    summary="The webhook calls of a task",
    description="One delivery per end of the task (a task retried and ended again is "
    "called again), with its tries so far and the last answer, oldest first.",
)
async def list_deliveries(task_id: TaskId, store: StoreDep, _: ReadAccess) -> DeliveryList:
    if await store.get(task_id) is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    found = await store.deliveries_of(task_id)
    return DeliveryList(items=[DeliveryOut.of(delivery) for delivery in found])


@router.post(
    "/{task_id}/cancel",
    response_model=TaskOut,
    responses={404: ERRORS[404], 409: ERRORS[409]},
    summary="Cancel a task",
    description="A pending task is cancelled at once and never runs; a running one "
    "is asked to stop (cancel_requested) and becomes cancelled when it does.",
)
async def cancel_task(
    task_id: TaskId, store: StoreDep, request: Request, _: AdminAccess
) -> TaskOut:
    task = await store.cancel(task_id)
    node_of(request).observer.task_changed(task)
    return TaskOut.of(task)


@router.post(
    "/{task_id}/retry",
    response_model=TaskOut,
    responses={404: ERRORS[404], 409: ERRORS[409]},
    summary="Retry a dead task",
    description="A failed or cancelled task goes back to pending with fresh attempts.",
)
async def retry_task(
    task_id: TaskId, store: StoreDep, relay: RelayDep, request: Request, _: AdminAccess
) -> TaskOut:
    task = await store.retry(task_id)
    if relay is not None:
        relay.wake()  # its outbox row is due at once
    node_of(request).observer.task_changed(task)
    return TaskOut.of(task)
