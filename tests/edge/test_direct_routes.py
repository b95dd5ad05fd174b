"""``POST /tasks/`` is served by the edge before FastAPI's router (``krolik/api/direct.py``):
its errors must still reach the app's handlers, an unexpected one must still be a logged
500 with no traceback, and behind a path prefix the router serves it as before."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi.routing import APIRoute

from krolik.api.app import create_app
from krolik.api.direct import DirectRoutes
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.metrics import Metrics
from krolik.node import Node, Role
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.records import Enqueued, NewTask
from tests.edge.conftest import BASE_URL, AppClient


def _http_requests(client: httpx.AsyncClient, route: str, status: str) -> float | None:
    metrics: Metrics = client.app.state.node.metrics  # type: ignore[attr-defined]
    labels = {"method": "POST", "route": route, "status": status}
    return metrics.registry.get_sample_value("krolik_http_requests_total", labels)


async def test_an_unexpected_error_is_a_500_that_says_nothing_more(
    make_client: AppClient, store: TaskStore, monkeypatch: pytest.MonkeyPatch
):
    async def broken(new_tasks: Sequence[NewTask], **_: object) -> Sequence[Enqueued]:
        raise RuntimeError("a secret detail of the failure")

    api = await make_client()
    monkeypatch.setattr(store, "enqueue", broken)
    response = await api.post("/tasks/", json={"payload": 1})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "secret" not in response.text
    assert _http_requests(api, "/tasks/", "500") == 1
    monkeypatch.undo()
    assert (await api.post("/tasks/", json={"payload": 2})).status_code == 201


@pytest.mark.parametrize("path", ["/tasks/", "/tasks"])
async def test_both_spellings_are_served_directly_and_counted_by_route(
    make_client: AppClient, path: str, monkeypatch: pytest.MonkeyPatch
):
    served: list[str] = []
    serve = DirectRoutes.serve

    async def counted(self: DirectRoutes, route: APIRoute, *args: Any) -> None:
        served.append(route.path)
        await serve(self, route, *args)

    monkeypatch.setattr(DirectRoutes, "serve", counted)
    api = await make_client()
    response = await api.post(path, json={"payload": path})
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"]
    assert _http_requests(api, path, "201") == 1
    assert (await api.get(f"/tasks/{response.json()['id']}")).status_code == 200
    assert served == [path]


async def test_errors_reach_the_apps_handlers(make_client: AppClient):
    """HTTPException (413 while streaming), RequestValidationError and AuthError."""
    api = await make_client(api={"max_payload_bytes": 100}, auth={"enabled": True})
    unauthorized = await api.post("/tasks/", json={"payload": 1})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"] == "Bearer"

    open_api = await make_client(api={"max_payload_bytes": 100})

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap is hit while streaming
        yield b'{"payload": "'
        yield b"x" * 200
        yield b'"}'

    too_large = await open_api.post(
        "/tasks/", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert too_large.status_code == 413
    assert "100 bytes" in too_large.json()["detail"]
    invalid = await open_api.post("/tasks/", json={"payload": 1, "max_attempts": 0})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "max_attempts"]


async def test_behind_a_path_prefix_the_router_serves_it(
    store: TaskStore,
    make_broker: Callable[[], RabbitMQBroker],
    make_settings: Callable[..., Settings],
):
    broker = make_broker()
    await broker.connect()
    app = create_app(Node.build(make_settings(), {Role.API}, store=store, broker=broker))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, root_path="/krolik")
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as api:
            response = await api.post("/krolik/tasks/", json={"payload": "prefixed"})
            assert response.status_code == 201, response.text
            assert (await api.get(f"/krolik/tasks/{response.json()['id']}")).status_code == 200
    await broker.close()
