"""What the client reads from a handler: the name the registry gave it, and its types."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

import pytest
from krolik_client import ValidationFailed
from krolik_client.handlers import TASK_NAME_ATTRIBUTE, handler_types

from krolik.registry import TASK_NAME_ATTRIBUTE as SERVER_ATTRIBUTE
from krolik.registry import Registry
from tests.client.handlers import RESIZE, Invoice, Receipt, bill, measure, resize

if TYPE_CHECKING:
    from decimal import Decimal


class Point(typing.TypedDict):  # typing's: pydantic refuses it before Python 3.12
    x: int


def move(payload: Point) -> Point:
    return payload


def test_client_and_server_agree_on_the_attribute() -> None:
    assert TASK_NAME_ATTRIBUTE == SERVER_ATTRIBUTE


def test_the_registered_name_is_used_else_the_function_name() -> None:
    assert handler_types(resize).name == RESIZE
    assert handler_types(bill).name == "client.bill"
    assert handler_types(measure).name == "measure"

    async def unregistered(payload: int) -> int:
        return payload

    assert handler_types(unregistered).name == "unregistered"
    assert handler_types("any.name").name == "any.name"


def test_registering_a_bound_method_still_works() -> None:
    class Service:
        async def run(self, payload: int) -> int:
            return payload

    registry = Registry()
    registry.add(Service().run, name="service.run")
    assert "service.run" in registry


def test_payloads_are_dumped_and_results_loaded_by_the_annotations() -> None:
    types = handler_types(bill)
    assert types.dump_payload(Invoice(customer="a", cents=[1])) == {"customer": "a", "cents": [1]}
    assert types.load_result(1, {"customer": "a", "total_cents": 1}) == Receipt(
        customer="a", total_cents=1
    )
    with pytest.raises(ValidationFailed, match="result of task 1"):
        types.load_result(1, {"customer": "a"})


def test_annotations_not_known_at_run_time_mean_plain_json() -> None:
    def later(payload: Decimal) -> Any:
        return payload

    types = handler_types(later)
    assert (types.payload, types.result) == (None, None)
    assert types.dump_payload({"x": 1}) == {"x": 1}


def test_a_type_pydantic_refuses_travels_as_plain_json() -> None:
    types = handler_types(move)
    assert types.dump_payload({"x": 1}) == {"x": 1}
    assert types.load_result(1, {"x": 2}) == {"x": 2}
