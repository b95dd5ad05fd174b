from __future__ import annotations

import threading

import pytest

from krolik.errors import ConfigurationError, UnknownHandler
from krolik.registry import Handler, Registry, TaskContext

CONTEXT = TaskContext(
    task_id=1, name="n", queue="default", attempt=2, max_attempts=3, worker_id="w-1"
)


def test_decorator_without_arguments_uses_the_function_name():
    registry = Registry()

    @registry.task
    async def resize(payload):
        return payload

    assert "resize" in registry
    handler = registry.get("resize")
    assert handler.func is resize
    assert handler.is_async
    assert handler.max_attempts is None
    assert handler.timeout_seconds is None


def test_decorator_with_arguments():
    registry = Registry()

    @registry.task(name="emails.send", max_attempts=5, timeout=2.5)
    def send(payload):
        return payload

    assert "send" not in registry
    handler = registry.get("emails.send")
    assert handler.func is send  # the decorator returns the function itself
    assert handler.max_attempts == 5
    assert handler.timeout_seconds == 2.5
    assert not handler.is_async


async def test_sync_handler_runs_in_a_worker_thread():
    registry = Registry()
    seen: list[threading.Thread] = []

    @registry.task
    def blocking(payload):
        seen.append(threading.current_thread())
        return payload * 2

    assert await registry.get("blocking").run(21, CONTEXT) == 42
    assert len(seen) == 1
    assert seen[0] is not threading.current_thread()
    assert seen[0].daemon, "a released sync handler must not keep the worker alive"


async def test_sync_handler_exception_propagates():
    registry = Registry()

    @registry.task
    def broken(payload):
        raise KeyError(payload)

    with pytest.raises(KeyError, match="nope"):
        await registry.get("broken").run("nope", CONTEXT)


async def test_async_handler_runs_on_the_loop():
    registry = Registry()
    seen: list[int] = []

    @registry.task
    async def nonblocking(payload):
        seen.append(threading.get_ident())
        return [payload]

    assert await registry.get("nonblocking").run("x", CONTEXT) == ["x"]
    assert seen == [threading.get_ident()]


@pytest.mark.parametrize("is_async", [True, False])
async def test_context_is_injected_only_when_asked_for(is_async):
    registry = Registry()
    received: list[object] = []

    if is_async:

        async def with_context(payload, context):
            received.append(context)
            return payload

        async def without_context(payload):
            return payload
    else:

        def with_context(payload, context):
            received.append(context)
            return payload

        def without_context(payload):
            return payload

    registry.add(with_context)
    registry.add(without_context)
    assert registry.get("with_context").wants_context
    assert not registry.get("without_context").wants_context
    assert await registry.get("with_context").run({"a": 1}, CONTEXT) == {"a": 1}
    assert await registry.get("without_context").run({"a": 1}, CONTEXT) == {"a": 1}
    assert received == [CONTEXT]


async def test_keyword_only_context():
    registry = Registry()

    @registry.task
    async def handler(payload, *, context):
        return context.attempt

    assert await registry.get("handler").run(None, CONTEXT) == 2


def test_duplicate_name_is_rejected():
    registry = Registry()

    @registry.task(name="dup")
    async def first(payload):
        return 1

    async def second(payload):
        return 2

    with pytest.raises(ConfigurationError, match="already registered"):
        registry.add(second, name="dup")
    assert registry.get("dup").func is first


def test_registering_the_same_function_again_is_allowed():
    registry = Registry()

    async def same(payload):
        return payload

    registry.add(same)
    registry.add(same, max_attempts=4)
    assert registry.get("same").max_attempts == 4


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_bad_max_attempts_rejected(max_attempts):
    registry = Registry()
    with pytest.raises(ConfigurationError, match="max_attempts"):

        @registry.task(max_attempts=max_attempts)
        async def handler(payload):
            return payload

    assert "handler" not in registry


@pytest.mark.parametrize("timeout", [0, -0.5])
def test_bad_timeout_rejected(timeout):
    registry = Registry()
    with pytest.raises(ConfigurationError, match="timeout"):
        registry.add(lambda payload: payload, name="t", timeout=timeout)
    assert "t" not in registry


@pytest.mark.parametrize("priority", [1001, -1001])
def test_a_priority_out_of_range_rejected(priority):
    registry = Registry()
    with pytest.raises(ConfigurationError, match="priority of 't' must be from -1000 to 1000"):
        registry.add(lambda payload: payload, name="t", priority=priority)
    assert "t" not in registry


def test_a_handler_declares_its_tasks_default_priority():
    registry = Registry()

    @registry.task(priority=5)
    async def urgent(payload):
        return payload

    assert registry.get("urgent").priority == 5
    assert registry.add(lambda payload: payload, name="plain").priority is None


def test_unknown_name_raises():
    with pytest.raises(UnknownHandler, match="nope"):
        Registry().get("nope")
    assert "nope" not in Registry()


def test_merged_other_wins_and_sources_are_untouched():
    async def a1(payload):
        return "a1"

    async def a2(payload):
        return "a2"

    async def b(payload):
        return "b"

    async def c(payload):
        return "c"

    left, right = Registry(), Registry()
    left.add(a1, name="a")
    left.add(b)
    right.add(a2, name="a")
    right.add(c)
    merged = left.merged(right)
    assert merged.get("a").func is a2
    assert merged.get("b").func is b
    assert merged.get("c").func is c
    assert left.get("a").func is a1
    assert "c" not in left
    assert right.get("a").func is a2
    assert "b" not in right
    assert merged is not left
    assert merged is not right


def test_handler_is_frozen():
    handler = Handler(name="x", func=lambda payload: payload)
    with pytest.raises(AttributeError):
        handler.name = "y"  # type: ignore[misc]
