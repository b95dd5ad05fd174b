"""The waker: held tasks dispatched again when their queue's gates open on their own.

A run's end wakes its queue at once (the worker that ran it), and so do a resume and a
change of limits (the API). What opens with no event is a rate window sliding past an
old start: the waker sleeps until the first such moment of the queues with held tasks
and wakes them then, and looks every ``interval`` seconds in any case, so a wake-up
lost with a worker killed at the wrong moment costs a few seconds, never a task. On
its first tick it writes the settings' queue limits (``APP__FLOW__QUEUES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from krolik.log import get_logger
from krolik.service import LoopService
from krolik.store.base import TaskStore

log = get_logger(__name__)

LOOK_SECONDS = 2.0
"""How often the waker looks when no rate window is due sooner."""
MIN_SLEEP_SECONDS = 0.01


class Waker(LoopService):
    name = "waker"

    def __init__(
        self,
        store: TaskStore,
        interval: float = LOOK_SECONDS,
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(interval)
        self.store = store
        self.look_seconds = interval
        self.defaults = defaults or {}
        """The settings' queue limits, written on the first tick (``declare_gates``)."""
        self._declared = False
        self.woken = 0

    async def tick(self) -> bool:
        woken_now: set[str] = set()
        if not self._declared:
            for queue in await self.store.declare_gates(self.defaults):
                log.info("queue_limits_declared", queue=queue, **self.defaults[queue])
                await self.store.wake(queue)
                woken_now.add(queue)
            self._declared = True
        soonest = self.look_seconds
        for queue, frees_in in (await self.store.held_queues()).items():
            # A woken task is not running until its message is claimed: a second wake
            # in the same tick would send the same free slots out twice.
            if queue in woken_now:
                continue
            if frees_in is None or frees_in <= 0:
                woken = await self.store.wake(queue)
                if woken:
                    self.woken += woken
                    log.info("held_tasks_woken", queue=queue, count=woken)
            if frees_in is not None and frees_in > 0:
                soonest = min(soonest, frees_in)
        self.interval = max(MIN_SLEEP_SECONDS, soonest)
        return False
