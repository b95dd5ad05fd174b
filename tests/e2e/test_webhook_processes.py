"""Webhooks through the real processes: kill -9 of the API (its sender inside) and of
the worker in the middle of a run of deliveries loses none and sends none astray."""

from __future__ import annotations

import httpx
import pytest

from krolik.states import DeliveryState, TaskStatus
from krolik.store.postgres import PostgresTaskStore
from krolik.webhooks import verify
from tests.conftest import WEBHOOK_KEY_ID, WEBHOOK_SECRET
from tests.e2e.conftest import Cluster, wait_until
from tests.e2e.test_processes import FINAL, post_task
from tests.support.receiver import receiving

pytestmark = pytest.mark.e2e

TASKS = 30
# A try that hangs is over in a second; a claim the killed API held runs out soon after.
QUICK = {"APP__WEBHOOKS__TIMEOUT_SECONDS": "1"}


async def test_every_delivery_survives_kill_9_of_api_and_worker(
    cluster: Cluster, store: PostgresTaskStore
) -> None:
    async with receiving() as receiver:
        api = await cluster.api("api-1", env=QUICK)
        worker = cluster.worker("worker-1")
        async with httpx.AsyncClient(timeout=10) as client:
            urls = {
                await post_task(
                    client,
                    api.url,
                    {
                        "name": "slow",
                        "payload": {"seconds": 0.1},
                        "webhook_url": receiver.url(f"/hook/{n}"),
                    },
                ): f"/hook/{n}"
                for n in range(TASKS)
            }
        await receiver.wait_for(3, timeout=30)  # deliveries under way
        worker.kill()
        api.proc.kill()
        assert len(receiver.calls) < TASKS, "the kills came too late to matter"
        await cluster.api("api-2", env=QUICK)
        cluster.worker("worker-2")

        async def all_called() -> bool:
            return {call.path for call in receiver.calls} == set(urls.values())

        await wait_until(all_called, 60, "every task's webhook was called")
        for call in receiver.calls:
            verify(call.body, call.headers, {WEBHOOK_KEY_ID: WEBHOOK_SECRET})
            task = call.json["task"]
            assert urls[task["id"]] == call.path, "a delivery went to another task's URL"
            assert task["status"] in {status.value for status in FINAL}

        async def all_recorded() -> bool:
            for task_id in urls:
                found = await store.deliveries_of(task_id)
                if [d.state for d in found] != [DeliveryState.DELIVERED]:
                    return False
            return True

        await wait_until(all_recorded, 30, "every delivery is recorded delivered")
        for task_id in urls:
            task = await store.get(task_id)
            assert task is not None
            assert task.status is TaskStatus.DONE
