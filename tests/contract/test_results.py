"""Results over HTTP, in both modes: every attempt, waiting, progress, following a task."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from tests.contract.http import (
    FAILING,
    FAILING_ATTEMPTS,
    REPORTS,
    SLEEPS,
    submit,
    wait_for,
)


def parse_events(text: str) -> list[dict[str, Any]]:
    """The events of a ``text/event-stream`` body, comments left out."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = orjson.loads(value) if key == "data" else value
        if fields:
            events.append(fields)
    return events


# -- attempts ------------------------------------------------------------------------
async def test_every_attempt_is_listed_with_its_error_and_traceback(
    client: httpx.AsyncClient,
) -> None:
    created = await submit(client, name=FAILING, payload=7)
    await wait_for(client, created["task_id"], "failed")
    response = await client.get(f"/tasks/{created['task_id']}/attempts")
    assert response.status_code == 200, response.text
    attempts = response.json()["items"]
    assert [a["attempt"] for a in attempts] == list(range(1, FAILING_ATTEMPTS + 1))
    assert [a["outcome"] for a in attempts] == ["retried"] * (FAILING_ATTEMPTS - 1) + ["failed"]
    for attempt in attempts:
        assert attempt["error"] == "RuntimeError: cannot handle 7"
        assert "Traceback" in attempt["traceback"]
        assert attempt["worker_id"]
        assert attempt["duration_seconds"] >= 0


async def test_a_done_task_has_one_succeeded_attempt(client: httpx.AsyncClient) -> None:
    created = await submit(client, payload="x")
    await wait_for(client, created["task_id"], "done")
    attempts = (await client.get(f"/tasks/{created['task_id']}/attempts")).json()["items"]
    assert [(a["attempt"], a["run"], a["outcome"]) for a in attempts] == [(1, 1, "succeeded")]


async def test_a_running_attempt_comes_last_without_an_outcome(client: httpx.AsyncClient) -> None:
    created = await submit(client, name=SLEEPS, payload=3)
    await wait_for(client, created["task_id"], "processing")
    attempts = (await client.get(f"/tasks/{created['task_id']}/attempts")).json()["items"]
    assert [(a["attempt"], a["outcome"], a["finished_at"]) for a in attempts] == [(1, None, None)]


async def test_attempts_of_a_missing_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/987654/attempts")
    assert response.status_code == 404
    assert "does not exist" in response.json()["detail"]


# -- waiting -------------------------------------------------------------------------
async def test_get_with_wait_answers_when_the_task_is_done(client: httpx.AsyncClient) -> None:
    created = await submit(client, name=SLEEPS, payload=0.3)
    response = await client.get(f"/tasks/{created['task_id']}", params={"wait": 20})
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["result"]) == ("done", "slept")


async def test_post_with_wait_submits_and_answers_with_the_result(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/tasks/", params={"wait": 20}, json={"payload": "w"})
    assert response.status_code == 201, response.text
    assert (response.json()["status"], response.json()["result"]) == ("done", "Processed 'w'")


async def test_a_wait_ends_with_the_current_state_of_a_task_that_never_runs(
    client: httpx.AsyncClient,
) -> None:
    created = await submit(client, name="contract.nobody_serves_this", payload=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.get(f"/tasks/{created['task_id']}", params={"wait": 0.5})
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert response.json()["waiting_reason"]
    assert loop.time() - started >= 0.5


async def test_a_wait_ends_when_the_task_is_cancelled(client: httpx.AsyncClient) -> None:
    created = await submit(client, name=SLEEPS, payload=30)
    await wait_for(client, created["task_id"], "processing")
    waiting = asyncio.create_task(client.get(f"/tasks/{created['task_id']}", params={"wait": 20}))
    await asyncio.sleep(0.1)
    assert (await client.post(f"/tasks/{created['task_id']}/cancel")).status_code == 200
    response = await asyncio.wait_for(waiting, 15)
    assert response.json()["status"] == "cancelled"


async def test_a_wait_goes_on_through_retries_to_the_end(client: httpx.AsyncClient) -> None:
    created = await submit(client, name=FAILING, payload=1)
    response = await client.get(f"/tasks/{created['task_id']}", params={"wait": 20})
    assert response.json()["status"] == "failed"
    assert response.json()["attempts"] == FAILING_ATTEMPTS


async def test_a_wait_that_is_not_a_number_of_seconds_is_422(client: httpx.AsyncClient) -> None:
    created = await submit(client, payload="x")
    for wait in ("soon", "-1", "nan", "99999"):
        got = await client.get(f"/tasks/{created['task_id']}", params={"wait": wait})
        assert got.status_code == 422, (wait, got.text)
        posted = await client.post("/tasks/", params={"wait": wait}, json={"payload": "x"})
        assert posted.status_code == 422, (wait, posted.text)
        assert "wait" in posted.text


async def test_waiting_for_a_missing_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/987654", params={"wait": 1})
    assert response.status_code == 404


# -- progress ------------------------------------------------------------------------
async def test_progress_appears_on_the_task_coalesced(client: httpx.AsyncClient) -> None:
    created = await submit(client, name=REPORTS, payload={"steps": 50, "linger": 1.5})
    task_id = created["task_id"]

    async def reported() -> dict[str, Any]:
        task = (await client.get(f"/tasks/{task_id}")).json()
        return task if task["progress"] and task["progress"]["fraction"] == 1.0 else {}

    deadline = asyncio.get_running_loop().time() + 10
    while not (task := await reported()):
        assert asyncio.get_running_loop().time() < deadline, "no final progress"
        await asyncio.sleep(0.05)
    assert task["status"] == "processing"
    assert task["progress"]["message"] == "step 50"
    done = await wait_for(client, task_id, "done")
    assert done["result"] == 50


# -- following one task --------------------------------------------------------------
async def test_a_task_s_events_run_from_queued_to_finished(client: httpx.AsyncClient) -> None:
    created = await submit(client, name=FAILING, payload=3)
    response = await client.get(f"/tasks/{created['task_id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    kinds = [event["event"] for event in events]
    assert kinds == ["queued"] + ["started", "retry_scheduled"] * (FAILING_ATTEMPTS - 1) + [
        "started",
        "finished",
    ]
    assert events[-1]["data"]["task"]["status"] == "failed"
    assert events[1]["data"]["attempt"] == 1
    assert events[1]["data"]["worker_id"]
    assert events[2]["data"]["error"] == "RuntimeError: cannot handle 3"
    ids = [event["id"] for event in events]
    assert len(set(ids)) == len(ids)


async def test_a_reconnect_with_last_event_id_gets_only_what_came_after(
    client: httpx.AsyncClient,
) -> None:
    created = await submit(client, name=FAILING, payload=4)
    url = f"/tasks/{created['task_id']}/events"
    everything = parse_events((await client.get(url)).text)
    for cut in range(len(everything)):
        resumed = await client.get(url, headers={"Last-Event-ID": everything[cut]["id"]})
        assert parse_events(resumed.text) == everything[cut + 1 :]


async def test_progress_is_an_event_of_the_running_task(client: httpx.AsyncClient) -> None:
    # The last report is written a second after the first; the run outlives that by
    # more than a busy machine's delays, so the stream sees it before the end.
    created = await submit(client, name=REPORTS, payload={"steps": 3, "linger": 2.5})
    events = parse_events((await client.get(f"/tasks/{created['task_id']}/events")).text)
    progress = [event["data"] for event in events if event["event"] == "progress"]
    assert progress, [event["event"] for event in events]
    assert progress[-1]["fraction"] == 1.0
    assert progress[-1]["message"] == "step 3"
    assert events[-1]["data"]["task"]["result"] == 3


async def test_a_last_event_id_that_is_not_ours_is_400(client: httpx.AsyncClient) -> None:
    created = await submit(client, payload="x")
    response = await client.get(
        f"/tasks/{created['task_id']}/events", headers={"Last-Event-ID": "banana"}
    )
    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["detail"]


async def test_events_of_a_missing_task_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/tasks/987654/events")).status_code == 404
