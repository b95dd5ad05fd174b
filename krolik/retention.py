"""Retention: finished tasks are deleted once they are older than their status's (and
queue's) retention, by a cleaner that runs beside each worker's rescuer.

The cleaner works in batches (``APP__RETENTION__BATCH_SIZE`` tasks a statement, each
holding its row locks only for that statement) and goes on at once while batches come
back full, so a backlog of millions drains at the database's pace without one long
transaction; several cleaners take different rows. ``krolik prune`` runs the same rules
once (``--dry-run``: counts only).
"""

from __future__ import annotations

import time

from krolik.events import Observer
from krolik.log import get_logger
from krolik.service import LoopService
from krolik.settings import FINISHED_STATUSES, RetentionSettings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import PruneRule

log = get_logger(__name__)


def retention_rules(settings: RetentionSettings) -> list[PruneRule]:
    """The settings as rules: per status, the default for every queue without a rule of
    its own, then each queue's own; a retention of forever makes no rule."""
    rules: list[PruneRule] = []
    for name in FINISHED_STATUSES:
        status = TaskStatus(name)
        own = sorted(queue for queue, ages in settings.queues.items() if name in ages)
        default = settings.of(name)
        if default is not None:
            rules.append(PruneRule(status, default, except_queues=tuple(own)))
        for queue in own:
            age = settings.of(name, queue)
            if age is not None:
                rules.append(PruneRule(status, age, queues=(queue,)))
    return rules


class Cleaner(LoopService):
    name = "cleaner"

    def __init__(
        self, store: TaskStore, settings: RetentionSettings, observer: Observer | None = None
    ) -> None:
        super().__init__(settings.interval_seconds)
        self.store = store
        self.settings = settings
        self.rules = retention_rules(settings)
        self.observer = observer or Observer()
        self.pruned = 0

    async def tick(self) -> bool:
        """One batch per rule; True (go on at once) while any batch came back full."""
        again = False
        for rule in self.rules:
            started = time.monotonic()
            deleted = await self.store.prune(rule, self.settings.batch_size)
            seconds = time.monotonic() - started
            if deleted:
                self.pruned += deleted
                self.observer.tasks_pruned(rule.status, deleted, seconds)
                log.debug(
                    "tasks_pruned",
                    status=rule.status.value,
                    count=deleted,
                    queues=rule.queues,
                    seconds=round(seconds, 4),
                )
            again = again or deleted >= self.settings.batch_size
        return again
