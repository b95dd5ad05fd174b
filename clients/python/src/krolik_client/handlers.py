"""What a handler function tells the client: its task name and its payload and result types.

Submitting by handler (``client.submit(resize, ResizeIn(...))``) needs nothing but the
function object: the registry of the server marks each registered function with the name
it registered it under, and the annotations of its first parameter and of its return say
how to serialise the payload and read the result (pydantic models, dataclasses,
TypedDicts, anything pydantic's ``TypeAdapter`` takes).
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from krolik_client.errors import ValidationFailed

TASK_NAME_ATTRIBUTE = "__krolik_task_name__"
"""Set by ``krolik.registry.Registry.add`` on every function it registers."""


@dataclass(frozen=True, slots=True)
class HandlerTypes:
    """A task name, and the adapters of its payload and result (None: plain JSON)."""

    name: str
    payload: TypeAdapter[Any] | None = None
    result: TypeAdapter[Any] | None = None

    def dump_payload(self, payload: Any) -> Any:
        """The payload as JSON-ready data, checked against the handler's type first."""
        if self.payload is None:
            try:
                return to_jsonable_python(payload)
            except Exception as exc:  # pydantic_core raises its own serialisation errors
                raise ValidationFailed(f"the payload of {self.name} is not JSON: {exc}") from exc
        try:
            checked = self.payload.validate_python(payload)
            return self.payload.dump_python(checked, mode="json")
        except ValidationError as exc:
            raise ValidationFailed(
                f"the payload does not match the handler {self.name}: {exc}", detail=exc.errors()
            ) from exc

    def load_result(self, task_id: int, result: Any) -> Any:
        """The stored result, validated into the handler's return type."""
        if self.result is None:
            return result
        try:
            return self.result.validate_python(result)
        except ValidationError as exc:
            raise ValidationFailed(
                f"the result of task {task_id} does not match the handler {self.name}: {exc}",
                detail=exc.errors(),
            ) from exc


_CACHE: dict[Callable[..., Any], HandlerTypes] = {}


def handler_types(task: Callable[..., Any] | str) -> HandlerTypes:
    """The name and types of ``task``, a handler function or a task name."""
    if isinstance(task, str):
        return HandlerTypes(task)
    try:
        return _CACHE[task]
    except (KeyError, TypeError):  # not seen yet, or not hashable
        pass
    types = _read(task)
    with contextlib.suppress(TypeError):  # not hashable: read each time
        _CACHE[task] = types
    return types


def task_name(task: Callable[..., Any]) -> str:
    name = getattr(task, TASK_NAME_ATTRIBUTE, None) or getattr(task, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"cannot tell the task name of {task!r}: submit it by name instead")
    return name


def _read(task: Callable[..., Any]) -> HandlerTypes:
    name = task_name(task)
    hints = _hints(task)
    try:
        parameters = list(inspect.signature(task).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    payload_type = hints.get(parameters[0].name, Any) if parameters else Any
    return HandlerTypes(name, _adapter(payload_type), _adapter(hints.get("return", Any)))


def _hints(task: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations; none when they cannot be resolved at run time (names
    imported only for type checkers): the task is then submitted as plain JSON."""
    target = task if inspect.isfunction(task) or inspect.ismethod(task) else type(task).__call__
    try:
        return typing.get_type_hints(target)
    except Exception:  # NameError and whatever a broken annotation raises
        return {}


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    """None for ``Any``, and for types pydantic refuses (a ``Snooze`` in a handler's return
    union; before Python 3.12, a ``typing.TypedDict``, where ``typing_extensions.TypedDict``
    is taken): such a payload or result travels as plain JSON, unchecked."""
    if annotation is Any:
        return None
    try:
        return TypeAdapter(annotation)
    except PydanticUserError:  # PydanticSchemaGenerationError included
        return None
