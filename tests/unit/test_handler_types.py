"""A handler's annotations say what its payload is and what it returns: pydantic models,
dataclasses and TypedDicts go in validated and come out as JSON; a payload that does not
match fails the task at once, since no retry can mend it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from krolik.handler_types import PayloadRejected
from krolik.registry import Registry, TaskContext
from krolik.retry import BackoffPolicy
from krolik.worker.decision import Verdict, decide
from krolik.worker.executor import Outcome, OutcomeKind

registry = Registry()


class Invoice(BaseModel):
    customer: str
    cents: list[int]


class Receipt(BaseModel):
    customer: str
    total_cents: int


@dataclass
class Size:
    width: int
    height: int


class Point(TypedDict):
    x: int
    y: int


@registry.task(name="bill")
async def bill(payload: Invoice) -> Receipt:
    assert isinstance(payload, Invoice)
    return Receipt(customer=payload.customer, total_cents=sum(payload.cents))


@registry.task(name="area")
def area(payload: Size) -> list[Receipt]:  # a plain function, in a thread
    assert isinstance(payload, Size)
    return [Receipt(customer="area", total_cents=payload.width * payload.height)]


@registry.task(name="norm")
async def norm(payload: Point, context: TaskContext) -> int:
    return abs(payload["x"]) + abs(payload["y"])


@registry.task(name="plain")
async def plain(payload: dict[str, Any]) -> Any:
    return payload  # not validated: a dict annotation is the JSON as it is


def context(name: str) -> TaskContext:
    return TaskContext(task_id=1, name=name, queue="q", attempt=1, max_attempts=3, worker_id="w")


async def run(name: str, payload: Any) -> Any:
    result = await registry.get(name).run(payload, context(name))
    orjson.dumps(result)  # stored as JSON
    return result


async def test_a_model_goes_in_validated_and_comes_out_as_json() -> None:
    result = await run("bill", {"customer": "ada", "cents": [100, "250"]})
    assert result == {"customer": "ada", "total_cents": 350}


async def test_a_dataclass_goes_in_and_models_in_a_list_come_out() -> None:
    assert await run("area", {"width": 3, "height": 4}) == [{"customer": "area", "total_cents": 12}]


async def test_a_typeddict_is_checked_and_stays_a_dict() -> None:
    assert await run("norm", {"x": -2, "y": 3}) == 5
    with pytest.raises(PayloadRejected, match="the payload does not match the handler norm"):
        await run("norm", {"x": "left"})


async def test_a_payload_the_type_refuses_is_rejected_with_the_reason() -> None:
    with pytest.raises(PayloadRejected, match="cents"):
        await run("bill", {"customer": "ada", "cents": "many"})


async def test_an_unstructured_annotation_passes_the_json_as_it_is() -> None:
    assert await run("plain", [1, 2]) == [1, 2]


def test_a_rejected_payload_fails_at_once_whatever_the_attempts_left() -> None:
    rejected = Outcome(OutcomeKind.FAILED, error="no", permanent=True)
    assert decide(rejected, 1, 5, BackoffPolicy(), random.Random(1)).verdict is Verdict.FAIL
    failed = Outcome(OutcomeKind.FAILED, error="boom")
    assert decide(failed, 1, 5, BackoffPolicy(), random.Random(1)).verdict is Verdict.RETRY
