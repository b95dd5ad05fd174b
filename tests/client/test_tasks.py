"""Submitting, waiting, reading and following tasks with ``AsyncClient``, in both modes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from krolik_client import (
    AsyncClient,
    Conflict,
    Finished,
    NotFound,
    ProgressReported,
    Queued,
    Started,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskStatus,
    ValidationFailed,
    WaitTimeout,
)

from tests.client.conftest import BASE_URL, QUICK_RETRIES
from tests.client.handlers import (
    EXPLODE_ATTEMPTS,
    RESIZE,
    Invoice,
    Receipt,
    ResizeIn,
    Size,
    bill,
    explode,
    measure,
    nap,
    resize,
    steps,
)


# -- typed from the handler -------------------------------------------------------------
async def test_a_typed_dict_handler_is_submitted_by_its_registered_name(
    krolik: AsyncClient,
) -> None:
    handle = await krolik.submit(resize, ResizeIn(url="a.png", width=640))
    assert handle.name == RESIZE
    out = await handle.result(timeout=10)
    assert out == {"url": "a.png", "width": 640, "height": 320}
    assert (await krolik.get(handle.id)).name == RESIZE


async def test_pydantic_models_are_serialised_and_the_result_validated(
    krolik: AsyncClient,
) -> None:
    handle = await krolik.submit(bill, Invoice(customer="ada", cents=[150, 250]))
    receipt = await handle.result(timeout=10)
    assert receipt == Receipt(customer="ada", total_cents=400)
    assert isinstance(receipt, Receipt)
    assert (await krolik.get(handle)).payload == {"customer": "ada", "cents": [150, 250]}


async def test_a_typed_round_trip_through_krolik_dev(embedded_app: Any) -> None:
    transport = httpx.ASGITransport(app=embedded_app)
    async with AsyncClient(BASE_URL, transport=transport, retries=QUICK_RETRIES) as client:
        handle = await client.submit(bill, Invoice(customer="dev", cents=[2, 3]))
        assert await handle.result(timeout=10) == Receipt(customer="dev", total_cents=5)


async def test_a_plain_function_returning_a_dataclass(krolik: AsyncClient) -> None:
    handle = await krolik.submit(measure, "640x480")
    assert handle.name == "measure"
    assert await handle.result(timeout=10) == Size(640, 480)


async def test_a_payload_that_does_not_match_is_refused_before_sending(
    krolik: AsyncClient,
) -> None:
    with pytest.raises(ValidationFailed, match=r"does not match the handler client\.resize"):
        await krolik.submit(resize, {"url": "a.png", "width": "wide"})  # type: ignore[arg-type]
    assert [task async for task in krolik.list(name=RESIZE)] == []


async def test_by_name_with_plain_json(krolik: AsyncClient) -> None:
    handle = await krolik.submit("client.resize", {"url": "b.png", "width": 10})
    assert await handle.result(timeout=10) == {"url": "b.png", "width": 10, "height": 5}


async def test_a_payload_sent_by_name_that_the_worker_refuses_fails_at_once(
    krolik: AsyncClient,
) -> None:
    """The worker checks the payload against the handler's type too (``bill`` takes an
    ``Invoice``): no retry could make it match, so the first attempt is the last."""
    handle = await krolik.submit("client.bill", {"customer": "ada", "cents": "many"})
    with pytest.raises(TaskFailed) as failed:
        await handle.result(timeout=10)
    assert "does not match the handler client.bill" in failed.value.error
    assert failed.value.attempts == 1
    assert [attempt.outcome for attempt in await krolik.attempts(handle)] == ["failed"]


async def test_a_handle_on_an_earlier_task_is_typed_too(krolik: AsyncClient) -> None:
    first = await krolik.submit(bill, Invoice(customer="bo", cents=[1]))
    later = krolik.handle(bill, first.id)
    assert await later.result(timeout=10) == Receipt(customer="bo", total_cents=1)


# -- options ------------------------------------------------------------------------------
async def test_options_reach_the_task(krolik: AsyncClient) -> None:
    before = datetime.now(UTC)
    handle = await krolik.submit(
        nap, 0.0, queue="slow", delay=timedelta(seconds=30), priority=5, max_attempts=4
    )
    task = await krolik.get(handle)
    assert (task.queue, task.priority, task.max_attempts) == ("slow", 5, 4)
    assert task.run_at >= before + timedelta(seconds=29)
    assert task.idempotency_key is not None  # made by the client, so a retry is safe


async def test_an_idempotency_key_given_twice_returns_the_same_task(krolik: AsyncClient) -> None:
    first = await krolik.submit(nap, 0.0, idempotency_key="order-17")
    again = await krolik.submit(nap, 0.0, idempotency_key="order-17")
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id


async def test_a_unique_task_carries_no_idempotency_key(krolik: AsyncClient) -> None:
    first = await krolik.submit(nap, 5.0, unique_key="nightly", delay=60)
    again = await krolik.submit(nap, 5.0, unique_key="nightly", delay=60)
    assert again.id == first.id
    assert (await krolik.get(first)).idempotency_key is None


async def test_submit_with_wait_answers_with_the_finished_task(krolik: AsyncClient) -> None:
    handle = await krolik.submit(nap, 0.05, wait=10)
    assert handle.task is not None
    assert handle.task.status is TaskStatus.DONE
    assert await handle.result() == "rested"


async def test_submit_many_in_one_batch(krolik: AsyncClient) -> None:
    handles = await krolik.submit_many(
        resize, [ResizeIn(url=f"{n}.png", width=n * 10) for n in range(1, 4)], max_attempts=3
    )
    assert [handle.created for handle in handles] == [True, True, True]
    results = [await handle.result(timeout=10) for handle in handles]
    assert [result["height"] for result in results] == [5, 10, 15]
    tasks = [await krolik.get(handle) for handle in handles]
    assert {task.max_attempts for task in tasks} == {3}
    assert len({task.idempotency_key for task in tasks}) == 3  # a key of its own each


# -- how tasks end ------------------------------------------------------------------------
async def test_a_failed_task_raises_with_error_traceback_and_attempts(
    krolik: AsyncClient,
) -> None:
    handle = await krolik.submit(explode, "x")
    with pytest.raises(TaskFailed) as failed:
        await handle.result(timeout=10)
    assert failed.value.error == "RuntimeError: cannot handle x"
    assert "Traceback" in (failed.value.traceback or "")
    assert failed.value.attempts == EXPLODE_ATTEMPTS
    attempts = await krolik.attempts(handle)
    assert [attempt.outcome for attempt in attempts] == ["retried", "failed"]


async def test_a_cancelled_task_raises_and_can_be_retried(krolik: AsyncClient) -> None:
    handle = await krolik.submit(nap, 0.0, delay=60)
    cancelled = await handle.cancel()
    assert cancelled.status is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelled):
        await handle.result(timeout=1)
    with pytest.raises(Conflict, match="cancelled"):
        await krolik.cancel(handle)
    retried = await handle.retry()
    assert retried.status is TaskStatus.PENDING


async def test_an_expired_task_raises(krolik: AsyncClient) -> None:
    handle = await krolik.submit(nap, 0.0, delay=0.6, expires_in=0.3)
    with pytest.raises(TaskExpired):
        await handle.result(timeout=10)


async def test_waiting_too_short_raises_with_the_task_as_last_read(krolik: AsyncClient) -> None:
    handle = await krolik.submit(nap, 2.0)
    with pytest.raises(WaitTimeout) as timed_out:
        await handle.result(timeout=0.3)
    assert timed_out.value.task.id == handle.id
    assert not timed_out.value.task.status.is_final


async def test_wait_returns_the_final_record(krolik: AsyncClient) -> None:
    handle = await krolik.submit(nap, 0.1)
    record = await krolik.wait(handle, timeout=10)
    assert (record.status, record.result) == (TaskStatus.DONE, "rested")
    assert (await krolik.get(handle, wait=5)).status is TaskStatus.DONE


# -- reading ------------------------------------------------------------------------------
async def test_list_follows_the_cursor_across_pages(krolik: AsyncClient) -> None:
    handles = [await krolik.submit(nap, 0.0, queue="listed", delay=60) for _ in range(5)]
    await krolik.submit(nap, 0.0, queue="other", delay=60)
    listed = [task.id async for task in krolik.list(queue="listed", page_size=2)]
    assert listed == sorted((handle.id for handle in handles), reverse=True)
    pending = [task async for task in krolik.list(queue="listed", status=TaskStatus.PENDING)]
    assert len(pending) == 5


async def test_missing_tasks_and_bad_requests_raise_with_the_servers_message(
    krolik: AsyncClient,
) -> None:
    with pytest.raises(NotFound, match="task 987654 does not exist") as missing:
        await krolik.get(987654)
    assert missing.value.status_code == 404
    with pytest.raises(ValidationFailed, match="queue") as invalid:
        await krolik.submit(nap, 0.0, queue="not a queue name")
    assert invalid.value.status_code == 422


# -- events -------------------------------------------------------------------------------
async def test_events_tell_the_story_up_to_finished(krolik: AsyncClient) -> None:
    handle = await krolik.submit(steps, 3)
    events = [event async for event in handle.events()]
    kinds = [type(event) for event in events]
    assert [kinds[0], kinds[-1]] == [Queued, Finished]
    assert Started in kinds
    assert ProgressReported in kinds
    progress = next(event for event in events if isinstance(event, ProgressReported))
    assert (progress.fraction, progress.message) == (0.5, "half way")
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert (finished.task.status, finished.task.result) == (TaskStatus.DONE, 3)
    assert all(event.id for event in events)


async def test_events_after_a_given_id_skip_what_was_seen(krolik: AsyncClient) -> None:
    handle = await krolik.submit(nap, 0.05, wait=10)
    seen = [event async for event in krolik.events(handle)]
    rest = [event async for event in krolik.events(handle, last_event_id=seen[0].id)]
    assert rest == seen[1:]
