from __future__ import annotations

from krolik.states import TaskStatus
from tests.conftest import wait_for_task


async def test_seed_client_posts_and_reads_back(api, store, make_worker):
    await make_worker()
    response = await api.post("/tasks/", json={"payload": "hello"})
    assert response.status_code == 201
    task_id = response.json()["task_id"]
    await wait_for_task(store, task_id, TaskStatus.DONE)
    body = (await api.get(f"/tasks/{task_id}")).json()
    assert body["status"] == "done"
    assert body["payload"] == "hello"
    assert body["result"] == "Processed 'hello'"
