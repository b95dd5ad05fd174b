"""Which requests the edge serves directly (``krolik/api/direct.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute

from krolik.api.app import create_app
from krolik.api.direct import DirectRoutes
from krolik.api.routes import tasks
from krolik.node import Node, Role
from krolik.settings import Settings


@pytest.fixture(scope="module")
def direct() -> DirectRoutes:
    app = create_app(Node.build(Settings(_env_file=None), {Role.API}))  # type: ignore[call-arg]
    return DirectRoutes(app, tasks.router, tasks.DIRECT_ENDPOINTS)


def _scope(method: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, **extra}


@pytest.mark.parametrize("path", ["/tasks/", "/tasks"])
def test_creating_a_task_is_direct(direct: DirectRoutes, path: str) -> None:
    route = direct.match(_scope("POST", path))
    assert isinstance(route, APIRoute)
    assert route.path == path
    assert route.endpoint in tasks.DIRECT_ENDPOINTS


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", "/tasks/", {}),
        ("POST", "/tasks/batch", {}),
        ("POST", "/tasks/1/cancel", {}),
        ("POST", "/tasks//", {}),
        ("POST", "/prefix/tasks/", {"root_path": "/prefix"}),
        ("POST", "/tasks/", {"root_path": "/prefix"}),
    ],
)
def test_everything_else_goes_to_the_router(
    direct: DirectRoutes, method: str, path: str, extra: dict[str, Any]
) -> None:
    assert direct.match(_scope(method, path, **extra)) is None
