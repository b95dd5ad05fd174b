"""Database errors of every kind, made by the real PostgreSQL, hit a real worker.

The worker's store connects as a role of its own, so the test can turn the server
against it alone: a ``lock_timeout`` on the role while the test holds the task's row
``FOR UPDATE`` (a conflict), a connection limit of 0 (too many connections), and
``default_transaction_read_only`` (what a demoted primary answers). After each, the
worker must be back at all its free slots, the task done once, and no message left
unsettled in RabbitMQ.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from krolik.registry import Registry
from krolik.settings import DatabaseSettings, Settings
from krolik.states import TaskStatus
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import NewTask
from krolik.worker import Worker
from tests.conftest import PG_HOST, PG_PORT, PG_USER, pg_url, wait_for_task
from tests.integration.conftest import queue_depth, stop_consuming, topology_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CONCURRENCY = 3


class Role:
    """A login role of the test's own, granted the Krolik tables of the run's database."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.name = f"krolik_role_{uuid.uuid4().hex[:8]}"

    async def admin(self, sql: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self) -> None:
        await self.admin(f'CREATE ROLE "{self.name}" LOGIN')
        await self.admin(
            f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{self.name}"; '
            f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{self.name}"',
            self.database,
        )

    async def drop(self) -> None:
        await self.admin(f'ALTER ROLE "{self.name}" NOLOGIN')
        await self.disconnect()
        await self.admin(f'DROP OWNED BY "{self.name}"', self.database)
        await self.admin(f'DROP ROLE "{self.name}"')

    async def disconnect(self) -> None:
        """End every session of the role (its pools find them gone and reconnect)."""
        await self.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.name}'"
        )

    def url(self) -> str:
        return pg_url(self.database).replace(f"//{PG_USER}@", f"//{self.name}@")


@pytest.fixture
async def role(pg_database: str) -> AsyncIterator[Role]:
    the_role = Role(pg_database)
    await the_role.create()
    yield the_role
    await the_role.drop()


@pytest.fixture
async def role_store(role: Role) -> AsyncIterator[PostgresTaskStore]:
    store = PostgresTaskStore.from_settings(
        DatabaseSettings(url=role.url(), pool_size=2, connect_timeout_seconds=2)  # type: ignore[arg-type]
    )
    yield store
    await store.close()


Gate = asyncio.Event


def gated_registry(gate: Gate, runs: list[int]) -> Registry:
    registry = Registry()

    @registry.task(name="errors.gated", max_attempts=3)
    async def gated(payload: Any, context: Any) -> str:
        runs.append(context.attempt)
        await gate.wait()
        return "done"

    return registry


async def settled_and_free(worker: Worker, settings: Settings, amqp: Any) -> None:
    """All slots back, and no delivery left unsettled: once the worker stops consuming,
    anything it had not acked would be back in the queue."""
    await wait_until(lambda: worker._slots.free == worker.concurrency, what="every slot back")
    await stop_consuming(worker)
    assert await queue_depth(amqp, topology_of(settings).queue("default").name) == 0


async def enqueue(store: PostgresTaskStore, name: str = "echo") -> int:
    [enqueued] = await store.enqueue([NewTask(name=name, queue="default", payload={"x": 1})])
    return enqueued.task.id


Spawn = Callable[..., Awaitable[Worker]]


async def test_a_claim_that_hits_lock_timeout_is_tried_again(
    store, settings, role, role_store, spawn_worker: Spawn, relay, amqp
):
    """The task's row is held FOR UPDATE by another transaction: the claim waits for its
    lock_timeout and fails with LockNotAvailable (a conflict)."""
    await role.admin(f"ALTER ROLE \"{role.name}\" SET lock_timeout = '200ms'")
    worker = await spawn_worker(worker_store=role_store, concurrency=CONCURRENCY)
    holder = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=role.database)
    try:
        async with holder.transaction():
            task_id = await enqueue(store)
            await holder.execute("SELECT 1 FROM krolik_tasks WHERE id = $1 FOR UPDATE", task_id)
            relay.wake()
            await asyncio.sleep(1.5)  # the claim meets the held row, maybe more than once
            assert (await store.get(task_id)).status is TaskStatus.PENDING
    finally:
        await holder.close()
    done = await wait_for_task(store, task_id, TaskStatus.DONE, timeout=10)
    assert done.attempts == 1
    await settled_and_free(worker, settings, amqp)


async def test_a_completion_that_hits_lock_timeout_is_written_once_the_lock_is_gone(
    store, settings, role, role_store, spawn_worker: Spawn, relay, make_rescuer, amqp
):
    await role.admin(f"ALTER ROLE \"{role.name}\" SET lock_timeout = '200ms'")
    gate, runs = Gate(), []
    worker = await spawn_worker(
        gated_registry(gate, runs), worker_store=role_store, concurrency=CONCURRENCY
    )
    make_rescuer()
    task_id = await enqueue(store, "errors.gated")
    relay.wake()
    await wait_until(lambda: runs == [1], what="the task runs")
    holder = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=role.database)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM krolik_tasks WHERE id = $1 FOR UPDATE", task_id)
            gate.set()  # the handler returns; its completion meets the held row
            await asyncio.sleep(1.0)
    finally:
        await holder.close()
    done = await wait_for_task(store, task_id, TaskStatus.DONE, timeout=10)
    assert done.attempts == 1, "the first run's outcome was recorded, not lost"
    assert runs == [1]
    await settled_and_free(worker, settings, amqp)


async def test_too_many_connections_is_waited_out(
    store, settings, role, role_store, spawn_worker: Spawn, relay, amqp
):
    """The role may open no connection at all (PostgreSQL answers 53300, as when
    max_connections is reached); its sessions are ended, so every statement needs one."""
    worker = await spawn_worker(worker_store=role_store, concurrency=CONCURRENCY)
    await role.admin(f'ALTER ROLE "{role.name}" CONNECTION LIMIT 0')
    await role.disconnect()
    task_id = await enqueue(store)
    relay.wake()
    await asyncio.sleep(1.5)
    assert (await store.get(task_id)).status is TaskStatus.PENDING
    await role.admin(f'ALTER ROLE "{role.name}" CONNECTION LIMIT -1')
    done = await wait_for_task(store, task_id, TaskStatus.DONE, timeout=15)
    assert done.attempts == 1
    await settled_and_free(worker, settings, amqp)


async def test_a_read_only_database_is_waited_out(
    store, settings, role, role_store, spawn_worker: Spawn, relay, amqp
):
    """New sessions of the role are read-only, as on a primary demoted to a standby: every
    write fails with ReadOnlySQLTransaction until the setting is lifted."""
    worker = await spawn_worker(worker_store=role_store, concurrency=CONCURRENCY)
    await role.admin(f'ALTER ROLE "{role.name}" SET default_transaction_read_only = on')
    await role.disconnect()
    task_id = await enqueue(store)
    relay.wake()
    await asyncio.sleep(1.5)
    assert (await store.get(task_id)).status is TaskStatus.PENDING
    await role.admin(f'ALTER ROLE "{role.name}" RESET default_transaction_read_only')
    done = await wait_for_task(store, task_id, TaskStatus.DONE, timeout=15)
    assert done.attempts == 1
    await settled_and_free(worker, settings, amqp)


async def test_a_completion_on_a_read_only_database_is_written_once_writable_again(
    store, settings, role, role_store, spawn_worker: Spawn, relay, amqp
):
    gate, runs = Gate(), []
    worker = await spawn_worker(
        gated_registry(gate, runs), worker_store=role_store, concurrency=CONCURRENCY
    )
    task_id = await enqueue(store, "errors.gated")
    relay.wake()
    await wait_until(lambda: runs == [1], what="the task runs")
    await role.admin(f'ALTER ROLE "{role.name}" SET default_transaction_read_only = on')
    await role.disconnect()
    gate.set()
    await asyncio.sleep(1.0)
    assert (await store.get(task_id)).status is TaskStatus.PROCESSING
    await role.admin(f'ALTER ROLE "{role.name}" RESET default_transaction_read_only')
    done = await wait_for_task(store, task_id, TaskStatus.DONE, timeout=15)
    assert done.attempts == 1
    assert runs == [1]
    await settled_and_free(worker, settings, amqp)


# -- the API -----------------------------------------------------------------------------
async def test_the_api_answers_503_for_every_kind_of_unavailable_database(
    settings, role, role_store, make_api
):
    api = await make_api(settings, store=role_store)
    assert (await api.post("/tasks/", json={"payload": 1})).status_code == 201

    await role.admin(f'ALTER ROLE "{role.name}" SET default_transaction_read_only = on')
    await role.disconnect()
    for _ in range(3):  # the pools find their sessions gone, then read-only ones
        response = await api.post("/tasks/", json={"payload": 2})
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
    await role.admin(f'ALTER ROLE "{role.name}" RESET default_transaction_read_only')

    await role.admin(f'ALTER ROLE "{role.name}" CONNECTION LIMIT 0')
    await role.disconnect()
    for path in ("/tasks/1", "/tasks", "/queues"):
        response = await api.get(path)
        assert response.status_code == 503, (path, response.text)
        assert response.headers["Retry-After"]
    response = await api.post("/tasks/", json={"payload": 3})
    assert response.status_code == 503, response.text
    await role.admin(f'ALTER ROLE "{role.name}" CONNECTION LIMIT -1')

    async def submits() -> bool:
        return (await api.post("/tasks/", json={"payload": 4})).status_code == 201

    await wait_until(submits, what="the API submits again")


async def test_a_submit_that_keeps_losing_a_lock_is_503_not_500(
    store, settings, role, role_store, make_api
):
    """Another transaction holds the row of a key: the keyed insert waits past
    lock_timeout each time it is tried, and the API says to come back. Meanwhile plain
    submissions of the same process go through: they do not queue behind it."""
    await role.admin(f"ALTER ROLE \"{role.name}\" SET lock_timeout = '700ms'")
    api = await make_api(settings, store=role_store)
    holder = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=role.database)
    try:
        async with holder.transaction():
            await holder.execute(
                "INSERT INTO krolik_tasks (name, queue, payload, status, attempts, "
                "cancel_requested, run_token, idempotency_key, idempotency_scope, run_at, "
                "created_at, updated_at) VALUES ('echo', 'default', '1', 'pending', 0, false, "
                "0, 'held', '', now(), now(), now())"
            )
            keyed = asyncio.create_task(
                api.post("/tasks/", json={"payload": 1, "idempotency_key": "held"})
            )
            await asyncio.sleep(0.2)  # the keyed insert waits for the held row now
            plain = await api.post("/tasks/", json={"payload": 2})
            assert plain.status_code == 201, plain.text
            assert not keyed.done(), "the plain submit waited for the keyed one"
            response = await keyed
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "1"
    finally:
        await holder.close()
