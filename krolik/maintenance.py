"""The lease rescuer: tasks whose worker stopped heartbeating go back to pending, and
pending tasks not started by their ``expires_at`` end expired.

It also sends again the messages of due pending tasks that were really lost. A task
with no outbox row was published; that it still waits, even for long, usually means
its queue has a backlog, and another message would only duplicate it. So a task is
dispatched again only when it has been due (and untouched) for
``redispatch_after_seconds`` and its queue in the broker holds no message ready for
delivery: then nothing is coming for it (a purged or deleted queue, a message the
broker dropped). The check runs a few times per ``redispatch_after_seconds``, not
every tick: it reads every stale task of a backlog.
"""

from __future__ import annotations

import time

from krolik.broker.base import Broker
from krolik.events import Observer
from krolik.log import get_logger
from krolik.service import LoopService
from krolik.settings import MaintenanceSettings
from krolik.store.base import TaskStore

log = get_logger(__name__)

BATCH = 500
REDISPATCH_BATCH = 5_000
"""Tasks sent again per statement: each one reads past the tasks already sent."""
REDISPATCH_CHECKS_PER_PERIOD = 5


class LeaseRescuer(LoopService):
    name = "rescuer"

    def __init__(
        self,
        store: TaskStore,
        settings: MaintenanceSettings,
        observer: Observer | None = None,
        *,
        broker: Broker | None = None,
    ) -> None:
        super().__init__(settings.rescue_interval_seconds)
        self.observer = observer or Observer()
        self.store = store
        self.broker = broker
        """Where lost messages are looked for; without one, nothing is dispatched again."""
        self.settings = settings
        self.rescued = 0
        self.redispatched = 0
        self._next_redispatch_check = 0.0
        self._lost: list[str] = []
        """Queues found empty with stale tasks: their tasks are being sent again."""

    async def tick(self) -> bool:
        rescued = await self.store.rescue_expired(BATCH)
        for task in rescued:
            log.warning(
                "task_rescued",
                task_id=task.task_id,
                attempt=task.attempts,
                status=task.status.value,
                reason="lease expired",
            )
            self.observer.task_rescued(task)
        self.rescued += len(rescued)
        for queue in sorted({task.queue for task in rescued}):
            await self.store.wake(queue)  # a rescued run of a gated queue frees its slot
        expired = await self.store.expire_overdue(BATCH)
        for ended in expired:
            log.info("task_expired", task_id=ended.id, queue=ended.queue, name=ended.name)
            self.observer.task_expired(ended)
        redispatched = await self._redispatch_lost()
        return len(rescued) >= BATCH or len(expired) >= BATCH or redispatched >= REDISPATCH_BATCH

    async def _redispatch_lost(self) -> int:
        """Send again the stale tasks of queues found empty. A queue found so is worked
        off whole, over as many ticks as it takes: the first tasks sent again fill the
        queue, and a look at it then would leave the rest waiting."""
        now = time.monotonic()
        after = self.settings.redispatch_after_seconds
        if self.broker is not None and now >= self._next_redispatch_check:
            self._next_redispatch_check = now + after / REDISPATCH_CHECKS_PER_PERIOD
            for queue in await self.store.stale_queues(after):
                if queue not in self._lost and await self._queue_is_empty(queue):
                    self._lost.append(queue)
        redispatched = 0
        while self._lost and redispatched < REDISPATCH_BATCH:
            queue, limit = self._lost[0], REDISPATCH_BATCH - redispatched
            sent = await self.store.redispatch_stale(after, limit, [queue])
            redispatched += sent
            if sent < limit:  # none of that queue left
                self._lost.pop(0)
        if redispatched:
            log.warning(
                "tasks_redispatched",
                count=redispatched,
                reason="due and waiting while their queue held no message",
            )
            self.observer.tasks_redispatched(redispatched)
        self.redispatched += redispatched
        return redispatched

    async def _queue_is_empty(self, queue: str) -> bool:
        assert self.broker is not None
        try:
            info = await self.broker.inspect_queue(queue)
        except Exception as exc:  # the broker is away: look again next time
            log.info("redispatch_check_skipped", queue=queue, error=str(exc))
            return False
        return info is None or info.messages == 0
