"""The waker: held tasks dispatched again when their queue's gates open on their own.

A run's end wakes its queue at once (the worker that ran it), and so do a resume and a
change of limits (the API). What opens with no event is a rate window sliding past an
old start: the waker sleeps until the first such moment of the queues with held tasks
and wakes them then, and looks every ``interval`` seconds in any case, so a wake-up
lost with a worker killed at the wrong moment costs a few seconds, never a task.
"""

from __future__ import annotations

from krolik.log import get_logger
from krolik.service import LoopService
from krolik.store.base import TaskStore

log = get_logger(__name__)

LOOK_SECONDS = 2.0
"""How often the waker looks when no rate window is due sooner."""
MIN_SLEEP_SECONDS = 0.01


class Waker(LoopService):
    name = "waker"

    def __init__(self, store: TaskStore, interval: float = LOOK_SECONDS) -> None:
        super().__init__(interval)
        self.store = store
        self.look_seconds = interval
        self.woken = 0

    async def tick(self) -> bool:
        soonest = self.look_seconds
        for queue, frees_in in (await self.store.held_queues()).items():
            if frees_in is None or frees_in <= 0:
                woken = await self.store.wake(queue)
                if woken:
                    self.woken += woken
                    log.info("held_tasks_woken", queue=queue, count=woken)
            if frees_in is not None and frees_in > 0:
                soonest = min(soonest, frees_in)
        self.interval = max(MIN_SLEEP_SECONDS, soonest)
        return False
