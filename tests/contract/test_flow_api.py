"""Flow control over HTTP, in both modes, with a real worker: pause and resume, a cap the
handlers themselves count, priorities, a key limit and a rate limit, set at run time
with ``PATCH /queues/{name}``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx

from tests.contract.http import COUNTED, SLEEPS, URGENT, Running, submit, wait_for


async def the_queue(client: httpx.AsyncClient) -> str:
    """The queue tasks go to by default (the worker's)."""
    response = await client.get("/queues")
    assert response.status_code == 200, response.text
    [queue] = response.json()
    name: str = queue["queue"]
    return name


async def change(client: httpx.AsyncClient, queue: str, **limits: Any) -> dict[str, Any]:
    response = await client.patch(f"/queues/{queue}", json=limits)
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def held(client: httpx.AsyncClient, queue: str, expected: dict[str, int]) -> None:
    """Wait until the queue holds ``expected`` tasks by reason."""
    for _ in range(500):
        response = await client.get(f"/queues/{queue}")
        if response.json()["held"] == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"queue {queue} holds {response.json()['held']}, not {expected}")


def started(task: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(task["started_at"])


async def test_a_paused_queue_holds_its_tasks_until_resumed(client: httpx.AsyncClient) -> None:
    queue = await the_queue(client)
    response = await client.post(f"/queues/{queue}/pause")
    assert response.status_code == 200, response.text
    assert response.json()["limits"]["paused"] is True
    tasks = [await submit(client, name="echo", payload=i) for i in range(3)]  # still accepted
    await held(client, queue, {"paused": 3})
    detail = (await client.get(f"/tasks/{tasks[0]['id']}")).json()
    assert detail["status"] == "pending"
    assert detail["waiting_reason"] == f"held: queue {queue!r} is paused"
    [listed] = (await client.get("/queues")).json()
    assert listed["paused"] is True
    assert listed["held"] == {"paused": 3}

    response = await client.post(f"/queues/{queue}/resume")
    assert response.status_code == 200, response.text
    for task in tasks:
        await wait_for(client, task["id"], "done")
    assert (await client.get(f"/queues/{queue}")).json()["held"] == {}


async def test_a_cap_is_never_passed_and_kept_full(client: httpx.AsyncClient) -> None:
    Running.reset()
    queue = await the_queue(client)
    detail = await change(client, queue, max_running=2)
    assert detail["limits"]["max_running"] == 2
    tasks = [await submit(client, name=COUNTED, payload={"seconds": 0.05}) for _ in range(12)]
    for task in tasks:
        await wait_for(client, task["id"], "done")
    assert Running.most == 2  # the worker has 4 slots: the cap, not the slots, bound it


async def test_the_highest_priority_waiting_task_starts_next(client: httpx.AsyncClient) -> None:
    queue = await the_queue(client)
    await change(client, queue, max_running=1)
    busy = await submit(client, name=SLEEPS, payload=2.0)  # holds the slot meanwhile
    await wait_for(client, busy["id"], "processing")
    low = [await submit(client, name="echo", payload=i) for i in range(4)]
    high = await submit(client, name="echo", payload="urgent", priority=9)
    assert high["priority"] == 9
    await held(client, queue, {"max_running": 5})
    done = [await wait_for(client, task["id"], "done") for task in [high, *low]]
    assert started(done[0]) < min(started(task) for task in done[1:])


async def test_a_high_priority_task_starts_before_the_backlog_without_gates(
    client: httpx.AsyncClient,
) -> None:
    Running.reset()
    low = [
        await submit(client, name=COUNTED, payload={"tag": "low", "seconds": 0.25})
        for _ in range(40)
    ]  # one message each, queued (and prefetched) ahead of the high one
    high = await submit(client, name=COUNTED, payload={"tag": "high", "seconds": 0}, priority=5)
    behind = Running.started.count("low")
    for task in [high, *low]:
        await wait_for(client, task["id"], "done")
    # The worker has 4 slots: the high task starts in one of the next that free, not
    # after the backlog of low tasks whose messages came first.
    assert behind < 30, Running.started  # a backlog was there
    assert Running.started.index("high") <= behind + 8, (behind, Running.started)


async def test_a_small_key_is_not_stuck_behind_a_big_one(client: httpx.AsyncClient) -> None:
    Running.reset()
    queue = await the_queue(client)
    await change(client, queue, max_running_per_key=1)
    big = [{"name": COUNTED, "payload": {"tag": "A", "seconds": 0.2}, "concurrency_key": "A"}]
    small = [{"name": COUNTED, "payload": {"tag": "B"}, "concurrency_key": "B"}]
    response = await client.post("/tasks/batch", json={"tasks": big * 12 + small * 2})
    assert response.status_code == 201, response.text
    for task_id in response.json()["task_ids"]:
        await wait_for(client, task_id, "done")
    # Each key runs one at a time; B's two (submitted last) started before A's fourth
    # of twelve, not after A's backlog.
    last_b = max(i for i, tag in enumerate(Running.started) if tag == "B")
    assert Running.started[:last_b].count("A") <= 3, Running.started
    assert Running.most == 2


async def test_a_rate_limit_spaces_the_starts(client: httpx.AsyncClient) -> None:
    queue = await the_queue(client)
    detail = await change(client, queue, rate_limit="3 per 1 second")
    assert detail["limits"]["rate_limit"] == "3 per 1 second"
    tasks = [await submit(client, name="echo", payload=i) for i in range(7)]
    done = [await wait_for(client, task["id"], "done") for task in tasks]
    starts = sorted(started(task) for task in done)
    for first, later in zip(starts, starts[3:], strict=False):
        assert (later - first).total_seconds() >= 1.0, starts  # no second held four
    assert (starts[-1] - starts[0]).total_seconds() >= 2.0


async def test_limits_change_at_run_time_and_null_lifts_one(client: httpx.AsyncClient) -> None:
    queue = await the_queue(client)
    await change(client, queue, max_running=0)  # nothing may start
    task = await submit(client, name="echo", payload=1)
    await held(client, queue, {"max_running": 1})
    detail = await change(client, queue, max_running=None)
    assert detail["limits"]["max_running"] is None
    await wait_for(client, task["id"], "done")


async def test_bad_limits_are_422_with_a_message(client: httpx.AsyncClient) -> None:
    queue = await the_queue(client)
    for body, words in [
        ({"rate_limit": "often"}, "not a rate limit"),
        ({"max_running": -1}, "greater than or equal to 0"),
        ({"max_running_per_key": 0}, "greater than or equal to 1"),
        ({"max_runing": 3}, "Extra inputs"),
        ({"max_running": 3215507448}, "less than or equal to 1000000"),
        ({"max_running_per_key": 2**70}, "less than or equal to 1000000"),
        ({"rate_limit": "163328086890616291328/minute"}, "at most 1,000,000 starts"),
        ({"paused": None}, "boolean"),
        ({"default_priority": 1001}, "less than or equal to 1000"),
        ({"default_priority": "high"}, "valid integer"),
    ]:
        response = await client.patch(f"/queues/{queue}", json=body)
        assert response.status_code == 422, (body, response.text)
        assert words in response.text, (body, response.text)
    response = await client.get("/queues/not%20a%20queue")
    assert response.status_code == 422
    untouched = (await client.get(f"/queues/{queue}")).json()
    assert untouched["limits"] == {
        "paused": False,
        "max_running": None,
        "max_running_per_key": None,
        "rate_limit": None,
        "default_priority": None,
    }


async def test_a_task_without_a_priority_takes_its_handlers_then_its_queues(
    client: httpx.AsyncClient,
) -> None:
    queue = await the_queue(client)
    detail = await change(client, queue, default_priority=3)
    assert detail["limits"]["default_priority"] == 3
    # The worker wrote its handlers' defaults at start: URGENT's is 7.
    assert (await submit(client, name=URGENT, payload=1))["priority"] == 7
    assert (await submit(client, name="echo", payload=1))["priority"] == 3
    assert (await submit(client, name=URGENT, payload=1, priority=-2))["priority"] == -2
    await change(client, queue, default_priority=None)
    plain = await submit(client, name="echo", payload=1)
    assert plain["priority"] == 0
    await wait_for(client, plain["id"], "done")
    response = await client.post(
        "/tasks/batch", json={"tasks": [{"name": URGENT, "payload": 1}, {"payload": "x"}]}
    )
    assert response.status_code == 201, response.text
    priorities = [
        (await client.get(f"/tasks/{task_id}")).json()["priority"]
        for task_id in response.json()["task_ids"]
    ]
    assert priorities == [7, 0]
