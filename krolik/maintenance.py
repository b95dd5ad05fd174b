"""The lease rescuer: tasks whose worker stopped heartbeating go back to pending.

It also re-dispatches due pending tasks that have sat untouched with no outbox
row for a long time (their message was lost, e.g. a purged queue), so no task
waits forever on a message that will not come.
"""

from __future__ import annotations

from krolik.events import Observer
from krolik.log import get_logger
from krolik.service import LoopService
from krolik.settings import MaintenanceSettings
from krolik.store.base import TaskStore

log = get_logger(__name__)

BATCH = 500


class LeaseRescuer(LoopService):
    name = "rescuer"

    def __init__(
        self, store: TaskStore, settings: MaintenanceSettings, observer: Observer | None = None
    ) -> None:
        super().__init__(settings.rescue_interval_seconds)
        self.observer = observer or Observer()
        self.store = store
        self.settings = settings
        self.rescued = 0
        self.redispatched = 0

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
            self.observer.task_rescued(task.task_id, task.status.value)
        self.rescued += len(rescued)
        redispatched = await self.store.redispatch_stale(
            self.settings.redispatch_after_seconds, BATCH
        )
        if redispatched:
            log.warning("tasks_redispatched", count=redispatched)
        self.redispatched += redispatched
        return len(rescued) >= BATCH or redispatched >= BATCH
