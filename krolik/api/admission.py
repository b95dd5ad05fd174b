"""Admission of new tasks: allowed queues and the bound on pending tasks per queue.

Counting a queue's pending tasks costs a query, so counts are reused for a second;
a burst may overshoot the bound by what arrives within that second.
"""

from __future__ import annotations

import time

from fastapi import HTTPException

from krolik.errors import QueueFull
from krolik.settings import ApiSettings
from krolik.store.base import TaskStore

COUNT_TTL_SECONDS = 1.0


class Admission:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._counts: dict[str, tuple[float, int]] = {}

    async def admit(self, store: TaskStore, queue: str) -> None:
        allowed = self.settings.queues
        if allowed is not None and queue not in allowed:
            raise HTTPException(
                422, f"unknown queue {queue!r}; the queues are: {', '.join(sorted(allowed))}"
            )
        bound = self.settings.max_pending_per_queue
        if bound is None:
            return
        now = time.monotonic()
        cached = self._counts.get(queue)
        if cached is None or now - cached[0] > COUNT_TTL_SECONDS:
            cached = (now, await store.count_pending(queue))
            self._counts[queue] = cached
        if cached[1] >= bound:
            raise QueueFull(
                f"queue {queue!r} is full ({cached[1]} pending tasks, the bound is {bound}); "
                "try again later"
            )
