"""A handler's payload and result types: JSON in and out of pydantic models, dataclasses
and TypedDicts, as the Python client (``krolik_client``) reads them on its side.

``async def bill(payload: Invoice) -> Receipt`` receives its payload validated into an
``Invoice`` and has its ``Receipt`` stored as JSON. A payload that does not match is
refused for good (``PayloadRejected``: no retry could make it match). A handler without
such annotations (``Any``, ``dict``, none) gets the JSON as it is, as before.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from krolik.errors import KrolikError


class PayloadRejected(KrolikError):
    """The payload does not match the type the handler declares: the task fails at once."""


def _structured(annotation: Any) -> bool:
    """A type whose values are built from JSON (and worth the validation)."""
    from pydantic import BaseModel
    from typing_extensions import is_typeddict  # knows both kinds of TypedDict

    if not isinstance(annotation, type):
        return False
    return (
        issubclass(annotation, BaseModel)
        or dataclasses.is_dataclass(annotation)
        or is_typeddict(annotation)
    )


@functools.cache
def payload_adapter(func: Callable[..., Any]) -> Any:
    """The TypeAdapter of ``func``'s payload parameter, or None (the JSON as it is)."""
    from pydantic import PydanticUserError, TypeAdapter

    try:
        hints = typing.get_type_hints(func)
        first = next(iter(inspect.signature(func).parameters))
    except (NameError, TypeError, ValueError, StopIteration):
        return None  # annotations it cannot resolve, or no parameter: plain JSON
    annotation: Any = hints.get(first)
    if annotation is None or not _structured(annotation):
        return None
    try:
        return TypeAdapter(annotation)
    except PydanticUserError:  # e.g. typing.TypedDict before Python 3.12
        return None


def load_payload(func: Callable[..., Any], name: str, payload: Any) -> Any:
    """The payload as ``func`` declares it (``PayloadRejected`` if it does not match)."""
    adapter = payload_adapter(func)
    if adapter is None:
        return payload
    from pydantic import ValidationError

    try:
        return adapter.validate_python(payload)
    except ValidationError as exc:
        raise PayloadRejected(f"the payload does not match the handler {name}: {exc}") from None


def dump_result(result: Any) -> Any:
    """A pydantic model (or a container of them) as JSON-ready data; anything else as it
    is (orjson writes dataclasses and plain values itself)."""
    from pydantic import BaseModel

    if isinstance(result, BaseModel) or (
        isinstance(result, list | tuple | dict) and _holds_a_model(result)
    ):
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(result)
    return result


def _holds_a_model(value: Any) -> bool:
    from pydantic import BaseModel

    items = value.values() if isinstance(value, dict) else value
    return any(isinstance(item, BaseModel) for item in items)
