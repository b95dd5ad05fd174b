"""API keys and scopes, against the running app: read < submit < admin; 401 without a
valid key (with WWW-Authenticate), 403 outside the key's scope; health and metrics open;
and the real ``krolik keys`` CLI making, listing and revoking keys in the test database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask
from tests.edge.conftest import AppClient, MakeKey, bearer, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTH_ON = {"enabled": True}


async def _pending_task(store: TaskStore) -> int:
    """A task far in the future: it stays pending whatever the relay does."""
    [enqueued] = await store.enqueue(
        [NewTask(name="default", queue="default", payload={"x": 1}, delay_seconds=3600)]
    )
    return enqueued.task.id


async def test_no_key_is_401_with_www_authenticate(make_client: AppClient, store: TaskStore):
    api = await make_client(auth=AUTH_ON)
    task_id = await _pending_task(store)
    for method, path in [
        ("GET", "/tasks"),
        ("GET", f"/tasks/{task_id}"),
        ("POST", "/tasks/"),
        ("POST", f"/tasks/{task_id}/cancel"),
        ("POST", f"/tasks/{task_id}/retry"),
        ("GET", "/queues"),
    ]:
        response = await api.request(method, path, json={"payload": 1})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "API key" in response.json()["detail"]
    assert (await store.get(task_id)).status is TaskStatus.PENDING


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer krolik_not-a-real-key",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "krolik_no-scheme",
    ],
)
async def test_wrong_key_is_401(make_client: AppClient, make_key: MakeKey, authorization: str):
    await make_key("admin")  # keys exist; none of them is this one
    api = await make_client(auth=AUTH_ON)
    response = await api.get("/tasks", headers={"Authorization": authorization})
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"]


async def test_a_key_with_one_character_changed_is_401(make_client: AppClient, make_key: MakeKey):
    key = await make_key("admin")
    api = await make_client(auth=AUTH_ON)
    assert (await api.get("/tasks", headers=key.headers)).status_code == 200
    flipped = key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B")
    response = await api.get("/tasks", headers=bearer(flipped))
    assert response.status_code == 401


async def test_revoked_key_is_401(make_client: AppClient, make_key: MakeKey, store: TaskStore):
    key = await make_key("admin")
    api = await make_client(auth={"enabled": True, "cache_seconds": 0})
    assert (await api.get("/tasks", headers=key.headers)).status_code == 200
    assert await store.revoke_api_key(key.name)
    response = await api.get("/tasks", headers=key.headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


async def test_revoke_takes_effect_after_the_cache_ttl(
    make_client: AppClient, make_key: MakeKey, store: TaskStore
):
    """With a cache, a revoked key keeps working until its entry expires, then stops."""
    key = await make_key("read")
    api = await make_client(auth={"enabled": True, "cache_seconds": 0.5})
    assert (await api.get("/tasks", headers=key.headers)).status_code == 200
    assert await store.revoke_api_key(key.name)
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()

    async def refused() -> bool:
        return (await api.get("/tasks", headers=key.headers)).status_code == 401

    await wait_until(refused, timeout=5, what="the revoked key is refused")
    assert loop.time() - revoked_at < 5


async def test_read_key_reads_but_cannot_submit(
    make_client: AppClient, make_key: MakeKey, store: TaskStore
):
    key = await make_key("read")
    api = await make_client(auth=AUTH_ON)
    task_id = await _pending_task(store)
    assert (await api.get("/tasks", headers=key.headers)).status_code == 200
    assert (await api.get(f"/tasks/{task_id}", headers=key.headers)).status_code == 200
    assert (await api.get("/queues", headers=key.headers)).status_code == 200
    response = await api.post("/tasks/", json={"payload": "no"}, headers=key.headers)
    assert response.status_code == 403, response.text
    assert "read" in response.json()["detail"]
    assert "WWW-Authenticate" not in response.headers
    for action in ("cancel", "retry"):
        response = await api.post(f"/tasks/{task_id}/{action}", headers=key.headers)
        assert response.status_code == 403, (action, response.text)
    tasks = await api.get("/tasks", headers=key.headers)
    assert [item["id"] for item in tasks.json()["items"]] == [task_id]


async def test_submit_key_creates_tasks_signed_with_its_name(
    make_client: AppClient, make_key: MakeKey, store: TaskStore
):
    key = await make_key("submit")
    api = await make_client(auth=AUTH_ON)
    response = await api.post(
        "/tasks/", json={"payload": "mine", "delay_seconds": 3600}, headers=key.headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created_by"] == key.name
    assert (await store.get(body["id"])).created_by == key.name
    read_back = await api.get(f"/tasks/{body['id']}", headers=key.headers)
    assert read_back.json()["created_by"] == key.name
    for action in ("cancel", "retry"):
        response = await api.post(f"/tasks/{body['id']}/{action}", headers=key.headers)
        assert response.status_code == 403, (action, response.text)
    assert (await store.get(body["id"])).status is TaskStatus.PENDING


async def test_admin_key_cancels_and_retries(
    make_client: AppClient, make_key: MakeKey, store: TaskStore
):
    key = await make_key("admin")
    api = await make_client(auth=AUTH_ON)
    created = await api.post(
        "/tasks/", json={"payload": 1, "delay_seconds": 3600}, headers=key.headers
    )
    assert created.status_code == 201
    task_id = created.json()["id"]
    cancelled = await api.post(f"/tasks/{task_id}/cancel", headers=key.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    retried = await api.post(f"/tasks/{task_id}/retry", headers=key.headers)
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "pending"
    assert (await store.get(task_id)).status is TaskStatus.PENDING


@pytest.mark.parametrize("path", ["/health", "/health/ready", "/metrics"])
async def test_health_and_metrics_need_no_key(make_client: AppClient, path: str):
    api = await make_client(auth=AUTH_ON)
    response = await api.get(path)
    assert response.status_code == 200, response.text


async def test_auth_off_by_default_everything_is_open(
    make_client: AppClient, store: TaskStore, settings: Settings
):
    assert settings.auth.enabled is False
    api = await make_client()
    created = await api.post("/tasks/", json={"payload": 1, "delay_seconds": 3600})
    assert created.status_code == 201, created.text
    assert created.json()["created_by"] is None
    task_id = created.json()["id"]
    assert (await api.get("/tasks")).status_code == 200
    assert (await api.get(f"/tasks/{task_id}")).status_code == 200
    assert (await api.get("/queues")).status_code == 200
    assert (await api.post(f"/tasks/{task_id}/cancel")).status_code == 200
    assert (await api.post(f"/tasks/{task_id}/retry")).status_code == 200
    # A key, even a bogus one, changes nothing while auth is off.
    assert (await api.get("/tasks", headers=bearer("krolik_bogus"))).status_code == 200


# -- the real CLI ------------------------------------------------------------------------
def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("APP__")}
    env["APP__DB__URL"] = settings.db.dsn
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "krolik.cli", "keys", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_keys_create_list_revoke(make_client: AppClient, settings: Settings, run_id: str):
    name = f"cli-{run_id}"
    created = await asyncio.to_thread(_cli, settings, "create", "--name", name, "--scope", "submit")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("krolik_"), created.stdout
    assert len(key.splitlines()) == 1
    assert "will not be shown again" in created.stderr

    api = await make_client(auth={"enabled": True, "cache_seconds": 0})
    response = await api.post("/tasks/", json={"payload": "via cli key"}, headers=bearer(key))
    assert response.status_code == 201, response.text
    assert response.json()["created_by"] == name
    assert (
        await api.post(f"/tasks/{response.json()['id']}/cancel", headers=bearer(key))
    ).status_code == 403

    listed = await asyncio.to_thread(_cli, settings, "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [row for row in listed.stdout.splitlines() if row.split("\t")[0] == name]
    assert line.split("\t")[1] == "submit"
    assert line.endswith("active")
    assert key not in listed.stdout + listed.stderr
    assert key.removeprefix("krolik_") not in listed.stdout + listed.stderr

    duplicate = await asyncio.to_thread(
        _cli, settings, "create", "--name", name, "--scope", "admin"
    )
    assert duplicate.returncode != 0
    assert "exists" in duplicate.stderr
    assert not duplicate.stdout.strip().startswith("krolik_")
    # The first key is untouched by the failed duplicate.
    assert (await api.get("/tasks", headers=bearer(key))).status_code == 200

    revoked = await asyncio.to_thread(_cli, settings, "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    refused = await api.get("/tasks", headers=bearer(key))
    assert refused.status_code == 401
    listed = await asyncio.to_thread(_cli, settings, "list")
    [line] = [row for row in listed.stdout.splitlines() if row.split("\t")[0] == name]
    assert "revoked" in line

    again = await asyncio.to_thread(_cli, settings, "revoke", name)
    assert again.returncode != 0


async def test_idempotency_keys_belong_to_their_caller(make_client: AppClient, make_key: MakeKey):
    """Two callers who happen to choose the same key each get their own task, and never
    see the other's payload or result."""
    alice, bob = await make_key("submit"), await make_key("submit")
    api = await make_client(auth=AUTH_ON)
    body = {"payload": {"card": "alice's"}, "idempotency_key": "order-1"}
    first = await api.post("/tasks/", json=body, headers=alice.headers)
    assert first.status_code == 201, first.text
    theirs = await api.post(
        "/tasks/",
        json={"payload": {"card": "bob's"}, "idempotency_key": "order-1"},
        headers=bob.headers,
    )
    assert theirs.status_code == 201, "bob's key is his own, not alice's task"
    assert theirs.json()["id"] != first.json()["id"]
    assert theirs.json()["payload"] == {"card": "bob's"}
    again = await api.post("/tasks/", json=body, headers=alice.headers)
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
