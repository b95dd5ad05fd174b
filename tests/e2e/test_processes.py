"""The real ``krolik api`` / ``worker`` / ``relay`` processes, crashed and stopped for real."""

from __future__ import annotations

import signal
import time
from urllib.parse import urlsplit

import httpx
import pytest

from krolik.states import TaskStatus
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import Task, TaskFilter
from tests.conftest import AMQP_URL
from tests.e2e.conftest import Cluster, wait_until
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.e2e

FINAL = {TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED}


async def post_task(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> int:
    response = await client.post(f"{url}/tasks/", json=body)
    assert response.status_code == 201, response.text
    task_id: int = response.json()["task_id"]
    return task_id


async def wait_status(
    store: PostgresTaskStore, task_id: int, status: TaskStatus, timeout: float = 20
) -> Task:
    async def reached() -> Task | None:
        task = await store.get(task_id)
        return task if task is not None and task.status is status else None

    return await wait_until(reached, timeout, f"task {task_id} is {status.value}")


def worker_pid(task: Task) -> int | None:
    """Worker ids are ``host-pid-suffix``."""
    if task.worker_id is None:
        return None
    return int(task.worker_id.rsplit("-", 2)[-2])


async def processing_tasks(store: PostgresTaskStore) -> list[Task]:
    return await store.list_tasks(
        TaskFilter(status=TaskStatus.PROCESSING), before_id=None, limit=100
    )


async def test_seed_client_through_real_processes(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    api = await cluster.api()
    cluster.worker()
    async with httpx.AsyncClient(timeout=10) as client:
        with_slash = await client.post(f"{api.url}/tasks/", json={"payload": "hi"})
        without_slash = await client.post(
            f"{api.url}/tasks", json={"payload": "hi"}, follow_redirects=False
        )
        assert with_slash.status_code == 201, with_slash.text
        assert without_slash.status_code == 201, without_slash.text  # no 307 redirect
        ids = [with_slash.json()["task_id"], without_slash.json()["task_id"]]
        assert ids[0] != ids[1]
        for task_id in ids:

            async def done(task_id: int = task_id) -> dict[str, object] | None:
                response = await client.get(f"{api.url}/tasks/{task_id}")
                assert response.status_code == 200, response.text
                body: dict[str, object] = response.json()
                return body if body["status"] == "done" else None

            body = await wait_until(done, 20, f"GET /tasks/{task_id} says done")
            assert body["result"] == "Processed 'hi'"
            assert body["payload"] == "hi"
            assert body["attempts"] == 1


async def test_worker_killed_mid_task_is_rescued_and_finished_by_another(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    api = await cluster.api()
    worker_a = cluster.worker("worker-a")
    async with httpx.AsyncClient(timeout=10) as client:
        task_id = await post_task(client, api.url, {"name": "slow", "payload": {"seconds": 3}})
    running = await wait_status(store, task_id, TaskStatus.PROCESSING)
    assert worker_pid(running) == worker_a.pid
    assert running.attempts == 1

    worker_a.kill()  # kill -9 in the middle of the task
    worker_b = cluster.worker("worker-b")

    done = await wait_status(store, task_id, TaskStatus.DONE, timeout=30)
    assert done.attempts == 2
    assert done.result["pid"] == worker_b.pid
    assert done.result["attempt"] == 2
    assert await processing_tasks(store) == []
    async with httpx.AsyncClient(timeout=10) as client:
        attempts = (await client.get(f"{api.url}/tasks/{task_id}/attempts")).json()["items"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "lost"), (2, "succeeded")]
    assert attempts[0]["worker_id"] == running.worker_id  # the killed one
    assert "lease expired" in attempts[0]["error"]


async def test_a_submit_that_waits_is_answered_by_another_process_s_completion(
    cluster: Cluster,
) -> None:
    """The worker's notice crosses RabbitMQ to the API process, which answers the wait:
    its periodic re-read (set to a minute here) would come too late."""
    slow_recheck = {"APP__RESULTS__RECHECK_SECONDS": "60"}
    api = await cluster.api(env=slow_recheck)
    cluster.worker()
    async with httpx.AsyncClient(timeout=30) as client:
        warm = await client.post(f"{api.url}/tasks/", params={"wait": 20}, json={"payload": 0})
        assert warm.json()["status"] == "done", warm.text  # the worker is up
        response = await client.post(
            f"{api.url}/tasks/", params={"wait": 20}, json={"payload": "waited"}
        )
    # Without the notice, the wait would end after 20 s with the task not yet seen done.
    assert response.status_code == 201, response.text
    assert (response.json()["status"], response.json()["result"]) == ("done", "Processed 'waited'")


async def test_api_killed_after_commit_loses_no_task(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    amqp = urlsplit(AMQP_URL)
    proxy = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await proxy.start()
    await proxy.cut()  # RabbitMQ looks down to this API: its relay cannot publish
    via_proxy = {"APP__RABBITMQ__URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/"}
    try:
        first = await cluster.api("api-1", env=via_proxy)
        async with httpx.AsyncClient(timeout=10) as client:
            ids = [
                await post_task(client, first.url, {"name": "echo", "payload": {"n": n}})
                for n in range(5)
            ]
        for task_id in ids:
            task = await store.get(task_id)
            assert task is not None
            assert task.status is TaskStatus.PENDING
        first.proc.kill()  # right after the commits, nothing was published

        await proxy.restore()
        await cluster.api("api-2", env=via_proxy)
        cluster.worker()

        for n, task_id in enumerate(ids):
            done = await wait_status(store, task_id, TaskStatus.DONE, timeout=30)
            assert done.result == {"n": n}
            assert done.attempts == 1
    finally:
        await proxy.stop()


async def test_relay_process_publishes_what_a_killed_api_committed(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    """As above, but a standalone ``krolik relay`` picks the orphaned outbox up."""
    amqp = urlsplit(AMQP_URL)
    proxy = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await proxy.start()
    await proxy.cut()
    try:
        api = await cluster.api(
            env={"APP__RABBITMQ__URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/"}
        )
        async with httpx.AsyncClient(timeout=10) as client:
            ids = [
                await post_task(client, api.url, {"name": "echo", "payload": n}) for n in range(3)
            ]
        api.proc.kill()
        cluster.relay()
        cluster.worker()
        for n, task_id in enumerate(ids):
            done = await wait_status(store, task_id, TaskStatus.DONE, timeout=30)
            assert done.result == n
    finally:
        await proxy.stop()


async def test_sigterm_releases_the_running_task_without_counting_the_attempt(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    api = await cluster.api()
    worker_a = cluster.worker("worker-a", env={"APP__WORKER__SHUTDOWN_GRACE_SECONDS": "1"})
    async with httpx.AsyncClient(timeout=10) as client:
        task_id = await post_task(client, api.url, {"name": "slow", "payload": {"seconds": 4}})
    running = await wait_status(store, task_id, TaskStatus.PROCESSING)
    assert worker_pid(running) == worker_a.pid

    signalled = time.monotonic()
    worker_a.send(signal.SIGTERM)
    code = await worker_a.wait_exit(timeout=10)
    took = time.monotonic() - signalled
    assert code == 0, f"exit code {code} after {took:.1f}s:\n{worker_a.tail()}"
    assert took < 8, f"the worker took {took:.1f}s to stop with a 1s grace"

    released = await store.get(task_id)
    assert released is not None
    assert released.status is TaskStatus.PENDING
    assert released.attempts == 0  # the interrupted attempt is not counted
    assert released.worker_id is None

    worker_b = cluster.worker("worker-b")
    done = await wait_status(store, task_id, TaskStatus.DONE, timeout=30)
    assert done.attempts == 1
    assert done.result["pid"] == worker_b.pid


async def test_a_capped_slot_comes_back_when_its_killed_worker_s_lease_is_rescued(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    api = await cluster.api()
    worker_a = cluster.worker("worker-a")
    async with httpx.AsyncClient(timeout=10) as client:
        queue = (await client.get(f"{api.url}/queues")).json()[0]["queue"]
        response = await client.patch(f"{api.url}/queues/{queue}", json={"max_running": 1})
        assert response.status_code == 200, response.text
        first = await post_task(client, api.url, {"name": "slow", "payload": {"seconds": 3}})
        running = await wait_status(store, first, TaskStatus.PROCESSING)
        second = await post_task(client, api.url, {"name": "slow", "payload": {"seconds": 0}})

        async def held() -> bool:
            task = await store.get(second)
            return task is not None and task.held == "max_running"

        await wait_until(held, 20, "the second task held by the cap")
        worker_a.kill()  # kill -9 while the capped task runs: its slot is the lease's
        cluster.worker("worker-b")
        # The rescuer takes the lost run back; the slot goes to one of the two, then the
        # other: both end done, never two at once.
        for task_id in (first, second):
            await wait_status(store, task_id, TaskStatus.DONE, timeout=40)
    assert worker_pid(running) == worker_a.pid
    ended = [await store.get(task_id) for task_id in (first, second)]
    spans = sorted((task.started_at, task.finished_at) for task in ended if task is not None)
    assert spans[0][1] <= spans[1][0]  # one after the other, within the cap of 1
