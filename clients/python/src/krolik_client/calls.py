"""Every endpoint of the API, and each request the clients make as a ``Call``.

A ``Call`` says what to send and how to read the answer; ``AsyncClient`` and ``Client``
only differ in how they send it. ``ENDPOINTS`` names the client method behind each
endpoint (a test checks it against the server's OpenAPI document both ways), and a
``Call`` can only be made for an endpoint it lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from krolik_client.errors import error_of
from krolik_client.handlers import HandlerTypes
from krolik_client.models import (
    AttemptList,
    BatchCreated,
    DeliveryList,
    Health,
    QueueDetail,
    QueueStats,
    Schedule,
    ScheduleTickPage,
    Task,
    TaskDetail,
    TaskPage,
    TaskStatus,
    Worker,
)
from krolik_client.submission import SubmitOptions, task_body

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

ENDPOINTS: Final[Mapping[tuple[str, str], str]] = {
    ("POST", "/tasks/"): "submit",
    ("POST", "/tasks/batch"): "submit_many",
    ("GET", "/tasks"): "list",
    ("GET", "/tasks/{task_id}"): "get",  # and ``wait``, with the server's wait parameter
    ("GET", "/tasks/{task_id}/attempts"): "attempts",
    ("GET", "/tasks/{task_id}/deliveries"): "deliveries",
    ("POST", "/tasks/{task_id}/cancel"): "cancel",
    ("POST", "/tasks/{task_id}/retry"): "retry",
    ("GET", "/tasks/{task_id}/events"): "events",
    ("GET", "/events"): "changes",
    ("GET", "/queues"): "queues",
    ("GET", "/queues/{name}"): "queue",
    ("PATCH", "/queues/{name}"): "change_queue",
    ("POST", "/queues/{name}/pause"): "pause_queue",
    ("POST", "/queues/{name}/resume"): "resume_queue",
    ("GET", "/workers"): "workers",
    ("POST", "/schedules"): "create_schedule",
    ("GET", "/schedules"): "schedules",
    ("GET", "/schedules/{name}"): "schedule",
    ("PATCH", "/schedules/{name}"): "change_schedule",
    ("DELETE", "/schedules/{name}"): "delete_schedule",
    ("POST", "/schedules/{name}/pause"): "pause_schedule",
    ("POST", "/schedules/{name}/resume"): "resume_schedule",
    ("GET", "/schedules/{name}/tasks"): "schedule_ticks",
    ("GET", "/health"): "health",
    ("GET", "/health/ready"): "ready",
    ("GET", "/metrics"): "metrics",
}
"""(method, path) of each endpoint -> the method of ``AsyncClient`` and ``Client`` for it."""

MAX_WAIT: Final = 3600.0
"""The longest ``wait`` the API takes in one request (the server may cap it lower)."""

MIN_WAIT_ROUND: Final = 0.2
"""A wait the server ended early (its own cap), the task not finished, is asked again no
sooner than this after the last."""

NO_BODY: Final[Any] = object()


def endpoint(method: str, path: str, **path_params: object) -> str:
    """The URL path of an endpoint of ``ENDPOINTS``, its parameters filled in."""
    if (method, path) not in ENDPOINTS:
        raise ValueError(f"{method} {path} is not an endpoint of the API")
    return path.format(**{key: quote(str(value), safe="") for key, value in path_params.items()})


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Any = NO_BODY
    replayable: bool = True
    """Sending it twice does what sending it once does, so a dropped connection is retried."""
    wait: float = 0.0
    """Seconds the server may hold the answer back (added to the read timeout)."""
    accept: frozenset[int] = frozenset()
    """Error statuses whose answer is still a result (``/health/ready``'s 503)."""

    def answer(self, response: httpx.Response) -> T:
        if response.is_success or response.status_code in self.accept:
            return self.parse(response)
        raise error_of(response)


@dataclass(frozen=True, slots=True)
class Submitted:
    task: Task
    created: bool
    """False when the server already had the task (a repeated idempotency key)."""


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _models(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    return lambda response: [model.model_validate(item) for item in response.json()]


def _nothing(response: httpx.Response) -> None:
    return None


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters, the unset ones left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[key] = value
    return out


def wait_param(seconds: float | None) -> dict[str, Any]:
    if not seconds or seconds <= 0:
        return {}
    return {"wait": f"{min(seconds, MAX_WAIT):.3f}"}


# -- tasks ---------------------------------------------------------------------------
def submit(
    types: HandlerTypes, payload: Any, options: SubmitOptions, wait: float | None = None
) -> Call[Submitted]:
    def parse(response: httpx.Response) -> Submitted:
        task = TaskDetail.model_validate_json(response.content)
        return Submitted(task=task, created=response.status_code == 201)

    return Call(
        "POST",
        endpoint("POST", "/tasks/"),
        parse,
        params=wait_param(wait),
        body=task_body(types, payload, options),
        wait=wait or 0.0,
    )


def submit_many(
    types: HandlerTypes, payloads: Sequence[Any], options: SubmitOptions
) -> Call[BatchCreated]:
    tasks = [task_body(types, payload, options) for payload in payloads]
    return Call(
        "POST",
        endpoint("POST", "/tasks/batch"),
        _model(BatchCreated),
        body={"tasks": tasks},
    )


def list_tasks(
    *,
    status: TaskStatus | str | None,
    name: str | None,
    queue: str | None,
    cursor: str | None,
    limit: int | None,
) -> Call[TaskPage]:
    params = _params(
        status=None if status is None else str(status),
        name=name,
        queue=queue,
        cursor=cursor,
        limit=limit,
    )
    return Call("GET", endpoint("GET", "/tasks"), _model(TaskPage), params=params)


def get_task(task_id: int, wait: float | None = None) -> Call[TaskDetail]:
    return Call(
        "GET",
        endpoint("GET", "/tasks/{task_id}", task_id=task_id),
        _model(TaskDetail),
        params=wait_param(wait),
        wait=wait or 0.0,
    )


def attempts(task_id: int) -> Call[AttemptList]:
    url = endpoint("GET", "/tasks/{task_id}/attempts", task_id=task_id)
    return Call("GET", url, _model(AttemptList))


def deliveries(task_id: int) -> Call[DeliveryList]:
    url = endpoint("GET", "/tasks/{task_id}/deliveries", task_id=task_id)
    return Call("GET", url, _model(DeliveryList))


def cancel(task_id: int) -> Call[Task]:
    # Not replayable: cancelling a task cancelled by the first try is refused (409).
    url = endpoint("POST", "/tasks/{task_id}/cancel", task_id=task_id)
    return Call("POST", url, _model(Task), replayable=False)


def retry(task_id: int) -> Call[Task]:
    url = endpoint("POST", "/tasks/{task_id}/retry", task_id=task_id)
    return Call("POST", url, _model(Task), replayable=False)


def task_events_url(task_id: int) -> str:
    return endpoint("GET", "/tasks/{task_id}/events", task_id=task_id)


def changes_url() -> str:
    return endpoint("GET", "/events")


def changes_params(queue: str | None, name: str | None) -> dict[str, Any]:
    return _params(queue=queue, name=name)


# -- queues and workers ----------------------------------------------------------------
def queues() -> Call[list[QueueStats]]:
    return Call("GET", endpoint("GET", "/queues"), _models(QueueStats))


def queue(name: str) -> Call[QueueDetail]:
    return Call("GET", endpoint("GET", "/queues/{name}", name=name), _model(QueueDetail))


def change_queue(name: str, changes: Mapping[str, Any]) -> Call[QueueDetail]:
    url = endpoint("PATCH", "/queues/{name}", name=name)
    return Call("PATCH", url, _model(QueueDetail), body=dict(changes))


def pause_queue(name: str) -> Call[QueueDetail]:
    url = endpoint("POST", "/queues/{name}/pause", name=name)
    return Call("POST", url, _model(QueueDetail))


def resume_queue(name: str) -> Call[QueueDetail]:
    url = endpoint("POST", "/queues/{name}/resume", name=name)
    return Call("POST", url, _model(QueueDetail))


def workers(include_dead: bool) -> Call[list[Worker]]:
    params = _params(all=True) if include_dead else {}
    return Call("GET", endpoint("GET", "/workers"), _models(Worker), params=params)


# -- schedules ---------------------------------------------------------------------------
def create_schedule(body: Mapping[str, Any]) -> Call[Schedule]:
    # Not replayable: a second try of a committed create finds the name taken (409).
    url = endpoint("POST", "/schedules")
    return Call("POST", url, _model(Schedule), body=dict(body), replayable=False)


def schedules() -> Call[list[Schedule]]:
    return Call("GET", endpoint("GET", "/schedules"), _models(Schedule))


def schedule(name: str) -> Call[Schedule]:
    return Call("GET", endpoint("GET", "/schedules/{name}", name=name), _model(Schedule))


def change_schedule(name: str, changes: Mapping[str, Any]) -> Call[Schedule]:
    url = endpoint("PATCH", "/schedules/{name}", name=name)
    return Call("PATCH", url, _model(Schedule), body=dict(changes))


def delete_schedule(name: str) -> Call[None]:
    url = endpoint("DELETE", "/schedules/{name}", name=name)
    return Call("DELETE", url, _nothing, replayable=False)


def pause_schedule(name: str) -> Call[Schedule]:
    url = endpoint("POST", "/schedules/{name}/pause", name=name)
    return Call("POST", url, _model(Schedule))


def resume_schedule(name: str) -> Call[Schedule]:
    url = endpoint("POST", "/schedules/{name}/resume", name=name)
    return Call("POST", url, _model(Schedule))


def schedule_ticks(name: str, before: datetime | None, limit: int | None) -> Call[ScheduleTickPage]:
    url = endpoint("GET", "/schedules/{name}/tasks", name=name)
    params = _params(before=before, limit=limit)
    return Call("GET", url, _model(ScheduleTickPage), params=params)


# -- operations ----------------------------------------------------------------------------
def health() -> Call[Health]:
    return Call("GET", endpoint("GET", "/health"), _model(Health))


def ready() -> Call[Health]:
    return Call("GET", endpoint("GET", "/health/ready"), _model(Health), accept=frozenset({503}))


def metrics() -> Call[str]:
    return Call("GET", endpoint("GET", "/metrics"), lambda response: response.text)
