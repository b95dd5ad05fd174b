"""The worker registry: who serves what, until when; on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from krolik.store.base import TaskStore
from krolik.store.records import WorkerInfo
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import workers


def worker(worker_id: str, *, alive_for: float = 30.0) -> WorkerInfo:
    now = datetime.now(UTC)
    return WorkerInfo(
        id=worker_id,
        host="host-1",
        pid=4242,
        queues=["default", "images"],
        handlers=["echo", "resize"],
        concurrency=8,
        running=0,
        started_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=alive_for),
    )


async def expire(store: TaskStore, worker_id: str, ago: timedelta) -> None:
    assert isinstance(store, SqlTaskStore)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(workers)
            .where(workers.c.id == worker_id)
            .values(expires_at=datetime.now(UTC) - ago)
        )


async def test_a_registered_worker_is_listed_with_what_it_serves(any_store: TaskStore) -> None:
    await any_store.register_worker(worker("w-1"))
    [listed] = await any_store.list_workers()
    assert (listed.id, listed.host, listed.pid) == ("w-1", "host-1", 4242)
    assert listed.queues == ["default", "images"]
    assert listed.handlers == ["echo", "resize"]
    assert listed.serves("images", "resize")
    assert not listed.serves("other", "resize")
    assert listed.expires_at > listed.last_seen_at
    await any_store.register_worker(worker("w-1"))  # again: the same row
    assert [w.id for w in await any_store.list_workers()] == ["w-1"]


async def test_a_heartbeat_keeps_a_worker_alive_and_counts_its_runs(any_store: TaskStore) -> None:
    await any_store.register_worker(worker("w-1", alive_for=1))
    before = (await any_store.list_workers())[0]
    assert await any_store.touch_worker("w-1", 3, 60)
    after = (await any_store.list_workers())[0]
    assert after.running == 3
    assert after.expires_at > before.expires_at + timedelta(seconds=30)
    assert not await any_store.touch_worker("never-registered", 0, 60)


async def test_an_expired_worker_is_dead_then_forgotten(any_store: TaskStore) -> None:
    for worker_id in ("alive", "dead", "long-dead"):
        await any_store.register_worker(worker(worker_id))
    await expire(any_store, "dead", timedelta(minutes=1))
    await expire(any_store, "long-dead", timedelta(hours=2))
    assert [w.id for w in await any_store.list_workers()] == ["alive"]
    every = {w.id for w in await any_store.list_workers(include_expired=True)}
    assert every == {"alive", "dead", "long-dead"}
    assert await any_store.prune_workers(3600) == 1
    every = {w.id for w in await any_store.list_workers(include_expired=True)}
    assert every == {"alive", "dead"}
    await any_store.unregister_worker("alive")
    assert await any_store.list_workers() == []
