"""Handlers the client tests submit to, typed as an application would type them.

The worker validates a handler's payload into its annotated type (a pydantic model, a
dataclass, a TypedDict) and stores what it returns as JSON: the client's types and the
worker's are the same on both ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import BaseModel
from typing_extensions import TypedDict  # what pydantic validates before Python 3.12

from krolik.registry import Registry, TaskContext

handlers = Registry()


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
