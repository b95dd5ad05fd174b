"""``POST /tasks/`` reads its key and body by hand; its OpenAPI operation must still
say what FastAPI says for a route that declares them (the fuzz tests generate from it)."""

from __future__ import annotations

from typing import Any

import pytest

from krolik.api.app import create_app
from krolik.node import Node, Role
from krolik.settings import Settings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(Node.build(Settings(_env_file=None), {Role.API})).openapi()  # type: ignore[call-arg]


def test_create_documents_the_task_body(document: dict[str, Any]) -> None:
    body = document["paths"]["/tasks/"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    name = schema["$ref"].removeprefix("#/components/schemas/")
    assert name == "TaskCreate"
    assert "payload" in document["components"]["schemas"][name]["required"]


def test_create_needs_the_same_key_as_the_batch_route(document: dict[str, Any]) -> None:
    create = document["paths"]["/tasks/"]["post"]
    batch = document["paths"]["/tasks/batch"]["post"]
    assert create["security"] == batch["security"]
    (scheme,) = create["security"][0]
    assert document["components"]["securitySchemes"][scheme]["scheme"] == "bearer"
