"""Overload and outages: body size (413), allowed queues (422), the bound on pending
tasks per queue (503 + Retry-After), and PostgreSQL unreachable (503 + Retry-After,
never 500, nothing secret in the answer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest

from krolik.errors import StoreUnavailable
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, TaskFilter
from krolik.submit import COUNT_TTL_SECONDS
from tests.edge.conftest import (
    DB_PASSWORD,
    AppClient,
    MakeKey,
    ProxiedStore,
    unique,
    wait_until,
)

SMALL_LIMIT = 4096


async def _task_count(store: TaskStore) -> int:
    return len(await store.list_tasks(TaskFilter(), before_id=None, limit=10_000))


def _assert_too_large(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 413, response.text[:300]
    assert response.json()["detail"] == f"the request body is larger than {limit} bytes"


# -- body size ---------------------------------------------------------------------------
async def test_body_over_the_limit_with_content_length_is_413(
    make_client: AppClient, store: TaskStore
):
    api = await make_client(api={"max_payload_bytes": SMALL_LIMIT})
    body = orjson.dumps({"payload": "x" * SMALL_LIMIT})
    response = await api.post("/tasks/", content=body, headers={"Content-Type": "application/json"})
    assert response.request.headers["Content-Length"] == str(len(body))
    _assert_too_large(response, SMALL_LIMIT)
    assert await _task_count(store) == 0


async def test_body_just_under_the_limit_is_accepted(make_client: AppClient, store: TaskStore):
    api = await make_client(api={"max_payload_bytes": SMALL_LIMIT})
    filler = SMALL_LIMIT - len(orjson.dumps({"payload": ""}))
    body = orjson.dumps({"payload": "x" * filler})
    assert len(body) == SMALL_LIMIT
    response = await api.post("/tasks/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text[:300]
    assert await _task_count(store) == 1


async def _chunks(body: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_streamed_body_over_the_limit_is_413(make_client: AppClient, store: TaskStore):
    api = await make_client(api={"max_payload_bytes": SMALL_LIMIT})
    body = orjson.dumps({"payload": "y" * (3 * SMALL_LIMIT)})
    response = await api.post(
        "/tasks/", content=_chunks(body), headers={"Content-Type": "application/json"}
    )
    assert "Content-Length" not in response.request.headers
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    _assert_too_large(response, SMALL_LIMIT)
    assert await _task_count(store) == 0


async def test_streamed_body_under_the_limit_is_accepted(make_client: AppClient, store: TaskStore):
    api = await make_client(api={"max_payload_bytes": SMALL_LIMIT})
    body = orjson.dumps({"payload": "z" * (SMALL_LIMIT // 2)})
    response = await api.post(
        "/tasks/", content=_chunks(body, 500), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text[:300]
    assert await _task_count(store) == 1


async def test_a_lying_content_length_does_not_get_past_the_limit(
    make_client: AppClient, store: TaskStore
):
    """A small declared length with a large streamed body is still cut at the limit."""
    api = await make_client(api={"max_payload_bytes": SMALL_LIMIT})
    body = orjson.dumps({"payload": "w" * (3 * SMALL_LIMIT)})
    response = await api.post(
        "/tasks/",
        content=_chunks(body),
        headers={"Content-Type": "application/json", "Content-Length": "10"},
    )
    _assert_too_large(response, SMALL_LIMIT)
    assert await _task_count(store) == 0


# -- allowed queues ----------------------------------------------------------------------
async def test_unknown_queue_is_422_when_queues_are_set(make_client: AppClient, store: TaskStore):
    api = await make_client(api={"queues": ["default", "emails"]})
    refused = await api.post("/tasks/", json={"payload": 1, "queue": "videos"})
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "videos" in detail
    assert "default, emails" in detail
    assert await _task_count(store) == 0
    accepted = await api.post("/tasks/", json={"payload": 1, "queue": "emails"})
    assert accepted.status_code == 201, accepted.text
    default = await api.post("/tasks/", json={"payload": 1})
    assert default.status_code == 201, default.text


# -- pending bound -----------------------------------------------------------------------
async def _fill(store: TaskStore, queue: str, count: int) -> list[int]:
    """Pending tasks not yet due: nothing runs them, so the count stays put."""
    enqueued = await store.enqueue(
        [NewTask(name="default", queue=queue, payload=i, delay_seconds=3600) for i in range(count)]
    )
    return [item.task.id for item in enqueued]


async def test_full_queue_is_503_with_retry_after(make_client: AppClient, store: TaskStore):
    queue = unique("full")
    await _fill(store, queue, 3)
    # The app is built after the queue filled up: its first count sees all three.
    api = await make_client(api={"max_pending_per_queue": 3})
    response = await api.post("/tasks/", json={"payload": "fourth", "queue": queue})
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    detail = response.json()["detail"]
    assert queue in detail
    assert "full" in detail
    assert await store.count_pending(queue) == 3
    # The bound is per queue: another queue takes tasks.
    other = await api.post("/tasks/", json={"payload": 1, "queue": unique("other")})
    assert other.status_code == 201, other.text


async def test_queue_under_the_bound_takes_tasks_up_to_it(make_client: AppClient, store: TaskStore):
    queue = unique("room")
    await _fill(store, queue, 2)
    api = await make_client(api={"max_pending_per_queue": 3})
    third = await api.post("/tasks/", json={"payload": "third", "queue": queue})
    counted_by = time.monotonic()  # the app counted the queue (2) during that request
    assert third.status_code == 201, third.text
    assert await store.count_pending(queue) == 3
    # Counts are reused for COUNT_TTL_SECONDS (a burst may overshoot within it, as
    # documented); once the count is older, the fourth task is refused.
    await wait_until(
        lambda: time.monotonic() - counted_by > COUNT_TTL_SECONDS, what="the count is stale"
    )
    fourth = await api.post("/tasks/", json={"payload": "fourth", "queue": queue})
    assert fourth.status_code == 503, fourth.text
    assert queue in fourth.json()["detail"]
    assert await store.count_pending(queue) == 3


async def test_full_queue_takes_tasks_again_when_one_leaves(
    make_client: AppClient, store: TaskStore
):
    queue = unique("drain")
    ids = await _fill(store, queue, 3)
    api = await make_client(api={"max_pending_per_queue": 3})
    assert (await api.post("/tasks/", json={"payload": 1, "queue": queue})).status_code == 503
    cancelled = await store.cancel(ids[0])
    assert cancelled.status is TaskStatus.CANCELLED
    created: list[int] = []

    async def accepted() -> bool:
        response = await api.post("/tasks/", json={"payload": 1, "queue": queue})
        if response.status_code == 201:
            created.append(response.json()["id"])
        return bool(created)

    await wait_until(accepted, timeout=5, what="the queue has room again")
    assert await store.count_pending(queue) == 3


# -- PostgreSQL unreachable --------------------------------------------------------------
def _assert_no_secrets(text: str, proxied: ProxiedStore) -> None:
    for secret in (DB_PASSWORD, proxied.url, "postgresql+asyncpg://", "guest:guest"):
        assert secret not in text
    assert "Traceback" not in text
    assert 'File "' not in text


@pytest.fixture
def proxied_settings(
    make_settings: Callable[..., Settings], proxied_store: ProxiedStore
) -> Settings:
    return make_settings(db={"url": proxied_store.url, "connect_timeout_seconds": 2})


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
async def test_database_down_is_503_with_retry_after(
    make_client: AppClient,
    proxied_store: ProxiedStore,
    proxied_settings: Settings,
    make_key: MakeKey,
    auth: bool,
):
    key = await make_key("admin")
    settings = proxied_settings.model_copy(
        update={
            "auth": proxied_settings.auth.model_copy(update={"enabled": auth, "cache_seconds": 0})
        }
    )
    api = await make_client(settings=settings, the_store=proxied_store.store)
    headers = key.headers if auth else {}
    created = await api.post("/tasks/", json={"payload": 1, "delay_seconds": 3600}, headers=headers)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    await proxied_store.proxy.cut()
    with pytest.raises(StoreUnavailable):
        await proxied_store.store.ping()
    loop = asyncio.get_running_loop()
    for method, path, body in [
        ("POST", "/tasks/", {"payload": 2}),
        ("GET", f"/tasks/{task_id}", None),
        ("GET", "/tasks", None),
        ("GET", "/queues", None),
        ("POST", f"/tasks/{task_id}/cancel", None),
    ]:
        started = loop.time()
        response = await api.request(method, path, json=body, headers=headers)
        assert loop.time() - started < 5, (method, path, "answered too slowly")
        assert response.status_code == 503, (method, path, response.status_code, response.text)
        assert int(response.headers["Retry-After"]) >= 1
        assert "unavailable" in response.json()["detail"]
        _assert_no_secrets(response.text + str(response.headers), proxied_store)

    ready = await api.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unavailable"
    _assert_no_secrets(ready.text, proxied_store)

    # It comes back by itself when PostgreSQL does.
    await proxied_store.proxy.restore()

    async def served() -> bool:
        response = await api.get(f"/tasks/{task_id}", headers=headers)
        return response.status_code == 200

    await wait_until(served, timeout=10, what="the API serves again after the outage")
