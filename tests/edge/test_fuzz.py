"""Schemathesis fuzzes the app's own OpenAPI schema, with the real PostgreSQL store and
RabbitMQ broker behind it: no 5xx on any endpoint, and every answer (status code,
content type, body) is one the schema declares.

Schemathesis reaches an ASGI app in-process, on an event loop of its own (a thread), so
the app here builds and owns its store and broker from the test settings and they live
on that loop; the fixture ends the app's lifespan and deletes its RabbitMQ queues.

Each endpoint is one test per generation mode (data that fits the schema, data that
does not), with a bounded, derandomized number of examples: reproducible, and the
whole file runs in well under a minute and a half. (Schemathesis' own
``schema.parametrize()`` needs the schema at import time, and its fixture-based
variant does not run on pytest 9, so the tests drive ``operation.as_strategy()``
with Hypothesis directly.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from krolik.api.app import create_app
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.node import Node, Role
from krolik.settings import Settings
from krolik.store.base import TaskStore
from tests.conftest import AMQP_URL

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_ENDPOINT = 25
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES_PER_ENDPOINT,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


NOT_FUZZED = {("GET", "/events")}
"""Streams that never end by design (followed in tests/e2e/test_embedded.py)."""


def _operations() -> list[Any]:
    """(method, path, mode) for every endpoint but ``NOT_FUZZED``; building an app
    connects to nothing.

    Data that does not fit the schema is generated only where there is an input to spoil.
    """
    settings = Settings(_env_file=None, debug=True)  # type: ignore[call-arg]
    document = create_app(Node.build(settings, {Role.API})).openapi()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if (method.upper(), path) in NOT_FUZZED:
                continue
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            found += [
                pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode}")
                for mode in modes
            ]
    return found


@pytest.fixture
async def krolik_schema(
    store: TaskStore, make_settings: Callable[..., Settings]
) -> AsyncIterator[Any]:
    """The schema of a running, ready app (debug: /openapi.json is served).

    One app per test: Schemathesis' pytest plugin ends every ASGI lifespan when a test
    ends. ``store`` is requested for its clean tables.
    """
    del store
    # Waits are cut short: a generated ?wait= on a task that never ends answers at once.
    settings = make_settings(debug=True, results={"max_wait_seconds": 0.05})
    app = create_app(Node.build(settings, {Role.API}))
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
        with asgi.get_client(app) as client:
            deadline = time.monotonic() + 10
            while client.get("/health/ready").status_code != 200:  # the relay connects
                assert time.monotonic() < deadline, "the app did not become ready"
                await asyncio.sleep(0.05)
        yield schema
    finally:
        asgi.shutdown_lifespans()  # the app closes its own store and broker
        broker: RabbitMQBroker = app.state.node.broker
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        async with connection:
            channel = await connection.channel()
            for name in broker.queue_names:
                await channel.queue_delete(name)
            topology = broker.topology
            for exchange in (
                topology.exchange,
                topology.dead_letter_exchange,
                topology.notice_exchange,
            ):
                await channel.exchange_delete(exchange)


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_endpoint_answers_as_its_schema_says(
    krolik_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = krolik_schema[path][method]
    calls = 0

    @FUZZ_SETTINGS
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(checks=CHECKS)

    fuzz()
    assert calls > 0, "nothing was generated for this endpoint"
