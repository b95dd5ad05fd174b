"""Idempotency keys across two real API processes: one task per key, never a 5xx.

Each process groups concurrent submissions into one transaction. The two get the same
200 keys, one in order and the other in reverse, all at once: their transactions insert
overlapping keys in opposite orders, which deadlocks unless every transaction takes
its keys in one order (and retries a conflict it still meets).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from krolik.store.postgres import PostgresTaskStore
from krolik.store.tables import tasks
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

KEYS = 200
BATCH = 20


async def submit_all(client: httpx.AsyncClient, url: str, order: list[int]) -> list[int]:
    async def one(i: int) -> int:
        body = {"payload": {"order": i}, "idempotency_key": f"order-{i}"}
        for _ in range(20):  # a careful client retries what the server asks it to
            response = await client.post(f"{url}/tasks/", json=body)
            if response.status_code != 503:
                return response.status_code
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 10)
        return response.status_code

    return list(await asyncio.gather(*(one(i) for i in order)))


async def submit_batches(client: httpx.AsyncClient, url: str, order: list[int]) -> list[int]:
    """The same keys in batches of ``BATCH``, each batch one transaction."""

    async def one(keys: list[int]) -> int:
        body = {"tasks": [{"payload": {"order": i}, "idempotency_key": f"order-{i}"} for i in keys]}
        response = await client.post(f"{url}/tasks/batch", json=body)
        for _ in range(20):
            if response.status_code != 503:
                break
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 10)
            response = await client.post(f"{url}/tasks/batch", json=body)
        return response.status_code

    chunks = [order[start : start + BATCH] for start in range(0, len(order), BATCH)]
    return list(await asyncio.gather(*(one(chunk) for chunk in chunks)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["single", "batch"])
async def test_two_processes_with_overlapping_keys_make_one_task_per_key(
    cluster: Cluster, store: PostgresTaskStore, how: str
) -> None:
    first, second = await cluster.api("api-a"), await cluster.api("api-b")
    limits = httpx.Limits(max_connections=100)
    submit = submit_all if how == "single" else submit_batches
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        forward, backward = list(range(KEYS)), list(reversed(range(KEYS)))
        answers = await asyncio.gather(
            submit(client, first.url, forward), submit(client, second.url, backward)
        )
    statuses = Counter(answers[0] + answers[1])
    assert set(statuses) <= {200, 201}, f"answers: {statuses}"
    if how == "single":
        assert statuses[201] == KEYS, statuses
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(tasks.c.idempotency_key, func.count()).group_by(tasks.c.idempotency_key)
            )
        ).all()
    assert len(rows) == KEYS
    assert {count for _, count in rows} == {1}
