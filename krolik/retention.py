"""Retention: finished tasks are deleted once they are older than their status's (and
queue's) retention, by a cleaner that runs beside each worker's rescuer.

The cleaner works in batches (``APP__RETENTION__BATCH_SIZE`` tasks a statement, each
holding its row locks only for that statement, and on PostgreSQL cancelled if it runs past
``BATCH_SECONDS_LIMIT``) and goes on while batches come back full,
pausing between them so that it spends at most ``BUSY_SHARE`` of the time deleting: a
backlog of millions drains without one long transaction and without taking the database
from the tasks in flight; several cleaners take different rows. ``krolik prune`` runs the same rules
once (``--dry-run``: counts only).
"""

from __future__ import annotations

import time

from krolik.errors import StoreConflict
from krolik.events import Observer
from krolik.log import get_logger
from krolik.service import LoopService
from krolik.settings import FINISHED_STATUSES, RetentionSettings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import PruneRule

log = get_logger(__name__)

BATCH_TARGET_SECONDS = 0.05
"""A batch that takes longer halves the next one (down to ``MIN_BATCH``); one that takes
under half of it doubles the next (up to ``BATCH_SIZE``): row locks stay held briefly
whatever the database's load."""
MIN_BATCH = 10


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
        self.batch = settings.batch_size
        """The size of the next batch (adapted to ``BATCH_TARGET_SECONDS``)."""

    async def tick(self) -> bool:
        """One batch per rule. While a batch comes back full, the next tick comes after a
        pause in proportion to the time deleting took (``busy_share``), not after the
        whole interval."""
        again = False
        busy = 0.0
        for rule in self.rules:
            size = self.batch
            started = time.monotonic()
            try:
                deleted = await self.store.prune(
                    rule, size, seconds_limit=self.settings.batch_seconds_limit
                )
            except StoreConflict:
                # Cancelled at the time limit (or lost to a deadlock): nothing went, and
                # a smaller batch comes next, soon.
                seconds = time.monotonic() - started
                busy += seconds
                self.batch = max(MIN_BATCH, size // 2)
                self.observer.tasks_pruned(rule.status, 0, seconds)
                log.info(
                    "prune_batch_cancelled",
                    status=rule.status.value,
                    size=size,
                    seconds=round(seconds, 4),
                )
                again = True
                continue
            seconds = time.monotonic() - started
            busy += seconds
            if seconds > BATCH_TARGET_SECONDS:
                self.batch = max(MIN_BATCH, size // 2)
            elif seconds < BATCH_TARGET_SECONDS / 2 and deleted >= size:
                self.batch = min(self.settings.batch_size, size * 2)
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
            again = again or deleted >= size
        share = self.settings.busy_share
        self.interval = busy * (1 / share - 1) if again else self.settings.interval_seconds
        return again and share >= 1
