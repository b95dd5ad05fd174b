"""``krolik.testing``, as an application's test suite uses it: one handler run with a
real context, and an in-process Krolik (the embedded mode, no HTTP) whose worker runs
what the code under test enqueued."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from krolik import Snooze, TaskContext
from krolik.handler_types import PayloadRejected
from krolik.registry import Registry
from krolik.states import TaskStatus
from krolik.testing import ANY, InProcessKrolik, run_handler

app = Registry()


class Order(BaseModel):
    id: int
    email: str
    later: bool = False


@app.task(name="app.welcome")
async def welcome(payload: Order, context: TaskContext) -> dict[str, Any]:
    context.progress(0.5, "writing")
    if payload.later:
        raise Snooze(30)
    context.progress(1.0, "sent")
    return {"to": payload.email, "attempt": context.attempt}


@app.task(name="app.checkout")
def checkout(payload: dict[str, Any]) -> int:  # a plain function: in a thread
    return int(payload["id"]) * 2


async def place_order(krolik: InProcessKrolik, order: Order) -> None:
    """The code under test: it enqueues through whatever Krolik it is given."""
    await krolik.enqueue("app.checkout", {"id": order.id})
    await krolik.enqueue("app.welcome", order.model_dump(), queue="emails")


async def test_one_handler_runs_with_a_real_context() -> None:
    first = await run_handler(welcome, {"id": 1, "email": "ada@example.com", "later": True})
    assert (first.snoozed_seconds, first.result) == (30, None)
    again = await run_handler(welcome, {"id": 1, "email": "ada@example.com"}, attempt=2)
    assert again.result == {"to": "ada@example.com", "attempt": 2}
    assert [(p.fraction, p.message) for p in again.progress] == [(0.5, "writing"), (1.0, "sent")]
    assert (await run_handler(checkout, {"id": 21})).result == 42
    with pytest.raises(PayloadRejected, match=r"does not match the handler app\.welcome"):
        await run_handler(welcome, {"id": "one"})
    assert welcome.__krolik_task_name__ == "app.welcome"  # type: ignore[attr-defined]


async def test_an_in_process_krolik_runs_what_the_code_enqueued(tmp_path: Any) -> None:
    async with InProcessKrolik(app, queues=["default", "emails"], folder=tmp_path) as krolik:
        await place_order(krolik, Order(id=7, email="bo@example.com"))
        [checkout_task] = await krolik.assert_enqueued("app.checkout", payload={"id": 7})
        [welcome_task] = await krolik.assert_enqueued("app.welcome", queue="emails", count=1)
        assert (await krolik.wait(checkout_task.id)).result == 14
        sent = await krolik.wait(welcome_task.id)
        assert (sent.status, sent.result) == (
            TaskStatus.DONE,
            {"to": "bo@example.com", "attempt": 1},
        )
        with pytest.raises(AssertionError, match=r"expected at least one task\(s\) 'app.refund'"):
            await krolik.assert_enqueued("app.refund")
        with pytest.raises(AssertionError, match="found 1; enqueued: "):
            await krolik.assert_enqueued("app.checkout", payload=ANY, count=2)
        with pytest.raises(ValueError, match="greater than or equal to 1"):
            await krolik.enqueue("app.checkout", {"id": 1}, max_attempts=0)
