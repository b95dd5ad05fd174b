from __future__ import annotations

import pytest

from krolik.builtin_tasks import DEFAULT_TASK_NAME, builtin_registry
from krolik.registry import TaskContext

CONTEXT = TaskContext(
    task_id=1, name="x", queue="default", attempt=1, max_attempts=1, worker_id="w"
)


def test_builtin_names():
    assert DEFAULT_TASK_NAME == "default"
    assert set(builtin_registry.handlers) == {"default", "echo", "sleep"}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("x", "Processed 'x'"),
        ({"a": 1}, "Processed {'a': 1}"),
        (5, "Processed 5"),
        (None, "Processed None"),
    ],
)
async def test_default_handler(payload, expected):
    assert await builtin_registry.get("default").run(payload, CONTEXT) == expected


@pytest.mark.parametrize("payload", [None, 1, "s", [1, {"b": [2]}], {"k": "v"}])
async def test_echo(payload):
    assert await builtin_registry.get("echo").run(payload, CONTEXT) == payload


@pytest.mark.parametrize(
    ("payload", "slept"),
    [({"seconds": 0}, 0.0), ({"seconds": 0.01}, 0.01), (0, 0.0), (0.001, 0.001), ({}, 0.0)],
)
async def test_sleep_valid(payload, slept):
    assert await builtin_registry.get("sleep").run(payload, CONTEXT) == {"slept": slept}


@pytest.mark.parametrize(
    "payload",
    [{"seconds": -1}, -0.5, {"seconds": "1"}, "1", {"seconds": True}, True, None, [1]],
)
async def test_sleep_rejects_bad_payloads(payload):
    with pytest.raises(ValueError, match="seconds"):
        await builtin_registry.get("sleep").run(payload, CONTEXT)
