"""Handlers the client tests submit to, typed as an application would type them.

The worker hands a handler its payload as JSON and stores what it returns as JSON
(dataclasses included). TypedDicts and dataclass results need nothing more;
``json_edges`` converts pydantic models at the handler's edge, both ways.
"""

from __future__ import annotations

import asyncio
import functools
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict  # what pydantic validates before Python 3.12

from krolik.registry import Registry, TaskContext

handlers = Registry()

In = TypeVar("In")
Out = TypeVar("Out")


def json_edges(func: Callable[[In], Awaitable[Out]]) -> Callable[[In], Awaitable[Out]]:
    """``func`` taking and returning its annotated types while the worker sees JSON."""
    hints = typing.get_type_hints(func)
    payload_type = TypeAdapter[Any](hints["payload"])
    result_type = TypeAdapter[Any](hints["return"])

    @functools.wraps(func)
    async def run(payload: Any) -> Any:
        result = await func(payload_type.validate_python(payload))
        return result_type.dump_python(result, mode="json")

    return run


class ResizeIn(TypedDict):
    url: str
    width: int


class ResizeOut(TypedDict):
    url: str
    width: int
    height: int


RESIZE = "client.resize"


@handlers.task(name=RESIZE)
async def resize(payload: ResizeIn) -> ResizeOut:
    """A TypedDict each way: plain JSON objects at run time."""
    return {"url": payload["url"], "width": payload["width"], "height": payload["width"] // 2}


class Invoice(BaseModel):
    customer: str
    cents: list[int]


class Receipt(BaseModel):
    customer: str
    total_cents: int


@handlers.task(name="client.bill")
@json_edges
async def bill(payload: Invoice) -> Receipt:
    return Receipt(customer=payload.customer, total_cents=sum(payload.cents))


@dataclass(frozen=True)
class Size:
    width: int
    height: int


@handlers.task
def measure(payload: str) -> Size:
    """A plain function (run in a thread) registered under its own name."""
    width, _, height = payload.partition("x")
    return Size(int(width), int(height))


EXPLODE_ATTEMPTS = 2


@handlers.task(name="client.explode", max_attempts=EXPLODE_ATTEMPTS)
async def explode(payload: str) -> None:
    raise RuntimeError(f"cannot handle {payload}")


@handlers.task(name="client.nap")
async def nap(payload: float) -> str:
    await asyncio.sleep(payload)
    return "rested"


@handlers.task(name="client.steps")
async def steps(payload: int, context: TaskContext) -> int:
    """Reports its progress, then lingers long enough for the report to be written."""
    context.progress(0.5, "half way")
    await asyncio.sleep(2.0)
    return payload * context.attempt
