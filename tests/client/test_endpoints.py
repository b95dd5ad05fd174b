"""Every endpoint of the API has a client method, in both clients, and the other way round."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from krolik_client import AsyncClient, Client
from krolik_client.calls import ENDPOINTS, endpoint

from krolik.api.app import create_app
from krolik.node import Node, Role
from krolik.settings import Settings

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def documented() -> set[tuple[str, str]]:
    app = create_app(Node.build(Settings(_env_file=None), {Role.API}))
    document: dict[str, Any] = app.openapi()
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in METHODS
    }


def test_every_documented_endpoint_has_a_client_method(documented: set[tuple[str, str]]) -> None:
    missing = sorted(documented - set(ENDPOINTS))
    assert not missing, f"endpoints without a client method: {missing}"


def test_the_client_names_no_endpoint_the_server_lacks(documented: set[tuple[str, str]]) -> None:
    unknown = sorted(set(ENDPOINTS) - documented)
    assert not unknown, f"the client knows endpoints the server does not document: {unknown}"


@pytest.mark.parametrize("client_class", [AsyncClient, Client])
def test_each_named_method_exists(client_class: type) -> None:
    for (method, path), name in ENDPOINTS.items():
        assert callable(getattr(client_class, name, None)), f"{method} {path}: no {name}"


def test_both_clients_have_the_same_methods_with_the_same_parameters() -> None:
    def public(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    async_methods = public(AsyncClient)
    sync_methods = public(Client)
    async_methods.pop("aclose")
    sync_methods.pop("close")
    assert async_methods == sync_methods


def test_a_call_can_only_be_made_for_a_known_endpoint() -> None:
    assert endpoint("GET", "/tasks/{task_id}", task_id=7) == "/tasks/7"
    assert endpoint("GET", "/queues/{name}", name="a b/c") == "/queues/a%20b%2Fc"
    with pytest.raises(ValueError, match="not an endpoint"):
        endpoint("GET", "/tasks/{task_id}/nothing", task_id=7)
