"""The other workers, as the store's registry knows them: who serves what, right now.

A worker that receives a task whose handler it lacks asks here whether a live worker
has it (then it puts the task back for that one) or none does (then the task waits,
with that reason visible, and fails only after ``unserved_fail_after_seconds``). The
answer is cached for a moment: a rolling deploy may send a burst of such tasks.
"""

from __future__ import annotations

import time

from krolik.store.base import TaskStore
from krolik.store.records import WorkerInfo

CACHE_SECONDS = 2.0


class Peers:
    def __init__(self, store: TaskStore, own_id: str) -> None:
        self.store = store
        self.own_id = own_id
        self._live: list[WorkerInfo] = []
        self._read_at = float("-inf")

    async def live(self) -> list[WorkerInfo]:
        if time.monotonic() - self._read_at > CACHE_SECONDS:
            self._live = await self.store.list_workers()
            self._read_at = time.monotonic()
        return self._live

    async def serves(self, queue: str, name: str) -> bool:
        """Whether another live worker consumes ``queue`` with a handler named ``name``."""
        return any(
            worker.serves(queue, name) for worker in await self.live() if worker.id != self.own_id
        )
