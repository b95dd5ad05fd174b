"""The HTTP API on the real app (its in-process relay included): cancel and retry,
idempotent creation, listing with filters and cursors, input validation, limits,
health and readiness, and 503 (not 500) while PostgreSQL is unreachable."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta

import pytest

from krolik.broker.wire import TaskMessage
from krolik.registry import Registry
from krolik.states import TaskStatus
from tests.conftest import wait_for_task
from tests.integration.conftest import count_tasks, outbox_count, wait_until


async def create(api, expected: int = 201, **body) -> dict:
    response = await api.post("/tasks", json=body)
    assert response.status_code == expected, response.text
    return response.json()


# -- cancel and retry ---------------------------------------------------------------------


async def test_cancelling_a_pending_task_means_it_never_runs(api, store, broker, make_worker):
    ran = asyncio.Event()
    registry = Registry()

    @registry.task(name="api.never")
    async def never(payload) -> None:
        ran.set()

    worker = await make_worker(registry)
    task = await create(api, name="api.never", payload=1, delay_seconds=30)
    response = await api.post(f"/tasks/{task['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert await outbox_count(store, task["id"]) == 0, "nothing is left to dispatch it"

    # Even a stray message for it runs nothing.
    await broker.publish([TaskMessage(task["id"], "api.never", "default")])
    await wait_until(lambda: worker.stats.skipped == 1, what="the stray message was skipped")
    assert not ran.is_set()
    assert (await store.get(task["id"])).status is TaskStatus.CANCELLED

    again = await api.post(f"/tasks/{task['id']}/cancel")
    assert again.status_code == 409


async def test_cancelling_a_running_task_stops_its_handler(api, store, make_worker):
    started = asyncio.Event()
    saw_cancel = asyncio.Event()
    registry = Registry()

    @registry.task(name="api.busy")
    async def busy(payload) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return "never"

    await make_worker(registry)
    task = await create(api, name="api.busy", payload=None)
    await asyncio.wait_for(started.wait(), 5)

    response = await api.post(f"/tasks/{task['id']}/cancel")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "processing"
    assert body["cancel_requested"] is True

    cancelled = await wait_for_task(store, task["id"], TaskStatus.CANCELLED, timeout=5)
    assert saw_cancel.is_set()
    assert cancelled.finished_at is not None
    assert (await api.get(f"/tasks/{task['id']}")).json()["status"] == "cancelled"


async def test_a_done_task_can_be_neither_cancelled_nor_retried(api, store, make_worker):
    await make_worker()
    task = await create(api, name="echo", payload="x")
    done = await wait_for_task(store, task["id"], TaskStatus.DONE)

    cancel = await api.post(f"/tasks/{task['id']}/cancel")
    assert cancel.status_code == 409
    assert "done" in cancel.json()["detail"]
    retry = await api.post(f"/tasks/{task['id']}/retry")
    assert retry.status_code == 409
    assert await store.get(task["id"]) == done


async def test_a_pending_task_cannot_be_retried(api):
    task = await create(api, name="echo", payload="x", delay_seconds=60)
    assert (await api.post(f"/tasks/{task['id']}/retry")).status_code == 409


async def test_a_cancelled_task_retried_runs(api, store, make_worker):
    await make_worker()
    task = await create(api, name="echo", payload="again", delay_seconds=60)
    assert (await api.post(f"/tasks/{task['id']}/cancel")).status_code == 200
    retried = await api.post(f"/tasks/{task['id']}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "pending"
    done = await wait_for_task(store, task["id"], TaskStatus.DONE)
    assert done.result == "again"


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/tasks/{id}"), ("post", "/tasks/{id}/cancel"), ("post", "/tasks/{id}/retry")],
)
async def test_ids_unknown_or_out_of_range(api, method, path):
    call = getattr(api, method)
    missing = await call(path.format(id=987654321))
    assert missing.status_code == 404
    assert "987654321" in missing.json()["detail"]
    for bad in (2**63, 0, -1, "abc"):
        assert (await call(path.format(id=bad))).status_code == 422, bad
    assert (await call(path.format(id=2**63 - 1))).status_code == 404


# -- creation --------------------------------------------------------------------------------


async def test_an_idempotency_key_creates_one_task(api, store):
    first = await api.post("/tasks", json={"payload": {"order": 42}, "idempotency_key": "o-42"})
    assert first.status_code == 201
    second = await api.post("/tasks", json={"idempotency_key": "o-42", "payload": {"order": 42}})
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    changed = await api.post("/tasks", json={"payload": {"order": 43}, "idempotency_key": "o-42"})
    assert changed.status_code == 409, "the same key with another body is refused"
    assert "o-42" in changed.json()["detail"]
    assert (await api.get(f"/tasks/{first.json()['id']}")).json()["payload"] == {"order": 42}
    assert await count_tasks(store) == 1
    assert await outbox_count(store) <= 1

    other = await api.post("/tasks", json={"payload": 1, "idempotency_key": "o-43"})
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]


async def test_concurrent_requests_with_one_idempotency_key_create_one_task(api, store):
    responses = await asyncio.gather(
        *(api.post("/tasks", json={"payload": "x", "idempotency_key": "race"}) for _ in range(10))
    )
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await count_tasks(store) == 1

    differing = await asyncio.gather(
        *(api.post("/tasks", json={"payload": i, "idempotency_key": "race-2"}) for i in range(10))
    )
    assert sorted(r.status_code for r in differing) == [201] + [409] * 9
    assert await count_tasks(store) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"payload": "NUL \u0000 inside"},
        {"payload": {"key \u0000": 1}},
        {"payload": [["deep", {"x": "\u0000"}]]},
        {"payload": 1, "idempotency_key": "k\u0000"},
        {"payload": 1, "priority": 5000},
        {"payload": 1, "concurrency_key": ""},
        {"payload": 1, "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5},
        {"payload": 1, "max_attempts": 0},
        {"payload": 1, "delay_seconds": -1},
        {"payload": 1, "name": "spaces are not allowed"},
        {"name": "echo"},
    ],
)
async def test_invalid_bodies_are_422_and_store_nothing(api, store, body):
    response = await api.post("/tasks", json=body)
    assert response.status_code == 422, response.text
    assert await count_tasks(store) == 0


async def test_a_body_over_the_size_limit_is_413(make_settings, make_api, store, make_broker):
    api = await make_api(
        make_settings(api={"max_payload_bytes": 200}), store=store, broker=make_broker()
    )
    small = await api.post("/tasks", json={"payload": "x" * 50})
    assert small.status_code == 201
    big = await api.post("/tasks", json={"payload": "x" * 500})
    assert big.status_code == 413
    assert "200 bytes" in big.json()["detail"]

    async def chunks():  # no Content-Length: the limit counts what streams in
        yield b'{"payload": "'
        for _ in range(10):
            yield b"x" * 50
        yield b'"}'

    streamed = await api.post(
        "/tasks", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await count_tasks(store) == 1


async def test_run_at_in_the_future_is_kept(api, store):
    when = datetime.now(UTC) + timedelta(hours=1)
    task = await create(api, name="echo", payload=1, run_at=when.isoformat())
    assert datetime.fromisoformat(task["run_at"]) == when
    stored = await store.get(task["id"])
    assert stored.run_at == when
    assert stored.status is TaskStatus.PENDING


# -- listing --------------------------------------------------------------------------------


async def test_listing_filters_and_pages_newest_first(api):
    ids = [
        (await create(api, name="page.item", payload=i, delay_seconds=3600))["id"] for i in range(7)
    ]
    await create(api, name="page.other", payload=0, delay_seconds=3600)
    side = await create(api, name="page.item", queue="side", payload=0, delay_seconds=3600)

    seen: list[int] = []
    pages: list[int] = []
    cursor = None
    while True:
        params = {"name": "page.item", "queue": "default", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await api.get("/tasks", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(len(page["items"]))
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [3, 3, 1]
    assert seen == sorted(ids, reverse=True), "newest first, no overlap, nothing missed"

    by_queue = (await api.get("/tasks", params={"queue": "side"})).json()
    assert [item["id"] for item in by_queue["items"]] == [side["id"]]
    pending = (await api.get("/tasks", params={"status": "pending", "limit": 100})).json()
    assert len(pending["items"]) == 9
    assert pending["next_cursor"] is None
    assert (await api.get("/tasks", params={"status": "done"})).json()["items"] == []
    assert (await api.get("/tasks", params={"status": "bogus"})).status_code == 422
    assert (await api.get("/tasks", params={"limit": 0})).status_code == 422


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        base64.urlsafe_b64encode(b"id:abc").decode(),
        base64.urlsafe_b64encode(b"id:-5").decode(),
        base64.urlsafe_b64encode(b"xx:5").decode(),
        base64.urlsafe_b64encode(f"id:{2**63}".encode()).decode(),
        "%%%",
    ],
)
async def test_a_bad_cursor_is_400(api, cursor):
    response = await api.get("/tasks", params={"cursor": cursor})
    assert response.status_code == 400, response.text
    assert "cursor" in response.json()["detail"]


# -- health ---------------------------------------------------------------------------------


async def test_health_and_readiness(api):
    alive = await api.get("/health")
    assert alive.status_code == 200
    assert alive.json()["status"] == "ok"
    await api.app.state.node.relay.wait_tick()  # the relay connected the broker
    ready = await api.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


async def test_postgresql_down_is_503_with_retry_after_not_500(
    settings, proxied_store, pg_proxy, make_api, make_broker
):
    api = await make_api(settings, store=proxied_store, broker=make_broker())
    await api.app.state.node.relay.wait_tick()
    assert (await api.get("/health/ready")).status_code == 200
    task = await create(api, name="echo", payload=1, delay_seconds=3600)

    await pg_proxy.cut()
    began = time.monotonic()
    ready = await api.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "unavailable", "broker": "ok"}
    assert (await api.get("/health")).status_code == 200, "liveness does not need PostgreSQL"
    for response in (
        await api.post("/tasks", json={"payload": 1}),
        await api.get(f"/tasks/{task['id']}"),
        await api.get("/tasks"),
        await api.post(f"/tasks/{task['id']}/cancel"),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"].isdigit()
        assert "traceback" not in response.text.lower()
    assert time.monotonic() - began < 5

    await pg_proxy.restore()

    async def ready_again() -> bool:
        return (await api.get("/health/ready")).status_code == 200

    await wait_until(ready_again, what="ready once PostgreSQL is back")
    assert (await api.get(f"/tasks/{task['id']}")).status_code == 200
    await create(api, payload=2)
