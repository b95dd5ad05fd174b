"""The one way tasks come in: admission, group commit, outbox hand-over, the submitted event.

The HTTP routes call it for one task or a batch; an application enqueuing in its own
transaction will too. Concurrent single submissions share one transaction (group
commit); keyed ones commit apart from plain ones, so a key that waits on a concurrent
insert of the same key holds up only its own kind. When this process's relay is idle,
the outbox rows of tasks due at once are written already claimed for it, and handed
over to it straight after the commit (no claim round trip).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from krolik.batching import MicroBatcher
from krolik.errors import IdempotencyConflict, QueueFull, SubmissionRefused
from krolik.events import Observer
from krolik.relay import OutboxRelay, handing_over
from krolik.settings import ApiSettings
from krolik.store.base import TaskStore
from krolik.store.records import Enqueued, NewTask
from krolik.webhooks.targets import WebhookTargets

COUNT_TTL_SECONDS = 1.0
"""Counts of pending tasks are reused this long: a burst may overshoot the bound by what
arrives within it, for one query a second per queue instead of one per submission."""


class Admission:
    """Allowed queues, and the bound on the pending tasks of each."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._counts: dict[str, tuple[float, int]] = {}

    async def admit(self, store: TaskStore, queue: str) -> None:
        allowed = self.settings.queues
        if allowed is not None and queue not in allowed:
            raise SubmissionRefused(
                f"unknown queue {queue!r}; the queues are: {', '.join(sorted(allowed))}"
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


class Submitter:
    def __init__(
        self,
        store: TaskStore,
        settings: ApiSettings,
        *,
        relay: OutboxRelay | None = None,
        observer: Observer | None = None,
        webhooks: WebhookTargets | None = None,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.relay = relay
        self.observer = observer or Observer()
        self.admission = Admission(settings)
        self.max_batch_size = settings.max_batch_size
        self._plain: MicroBatcher[NewTask, Enqueued] = MicroBatcher(self._commit)
        self._keyed: MicroBatcher[NewTask, Enqueued] = MicroBatcher(self._commit)

    async def submit(self, new: NewTask) -> Enqueued:
        """One task, in a transaction shared with the concurrent ones. Raises
        ``IdempotencyConflict`` for a key seen before with another request."""
        new = self._with_webhook(new)
        await self.admission.admit(self.store, new.queue)
        committer = self._plain if new.is_plain else self._keyed
        enqueued = await committer.submit(new)
        if enqueued.mismatch:
            raise IdempotencyConflict(
                f"the idempotency key {new.idempotency_key!r} was used before with a "
                "different request body; send a new key for a new task"
            )
        self._submitted([enqueued])
        return enqueued

    async def submit_many(self, new_tasks: Sequence[NewTask]) -> list[Enqueued]:
        """Tasks in one transaction of their own: all of them, or (a key seen before with
        another request, a full queue) none."""
        if len(new_tasks) > self.max_batch_size:
            raise SubmissionRefused(
                f"a batch holds at most {self.max_batch_size} tasks, not {len(new_tasks)}"
            )
        new_tasks = [self._with_webhook(new) for new in new_tasks]
        for queue in sorted({new.queue for new in new_tasks}):
            await self.admission.admit(self.store, queue)
        enqueued = await self.store.enqueue(
            new_tasks, claim_outbox_seconds=handing_over(self.relay), refuse_mismatch=True
        )
        self._submitted(enqueued)
        return enqueued

    def _with_webhook(self, new: NewTask) -> NewTask:
        """The task with its queue's webhook if it names none, the URL checked against
        the allow-list (``ForbiddenWebhook``, a 422, when refused)."""
        if self.webhooks is None:
            return new
        url = new.webhook_url or self.webhooks.settings.queue_urls.get(new.queue)
        if url is None:
            return new
        self.webhooks.check(url)
        return new if url == new.webhook_url else replace(new, webhook_url=url)

    async def _commit(self, new_tasks: Sequence[NewTask]) -> Sequence[Enqueued]:
        return await self.store.enqueue(new_tasks, claim_outbox_seconds=handing_over(self.relay))

    def _submitted(self, enqueued: Sequence[Enqueued]) -> None:
        """Count what was created and hand its claimed outbox rows to the relay, or just
        wake it: a task due already without one (a past ``run_at``) is polled."""
        for item in enqueued:
            if item.created:
                self.observer.task_submitted(item.task)
        if self.relay is None:
            return
        entries = [item.outbox for item in enqueued if item.outbox is not None]
        if entries:
            self.relay.hand_over(entries)
        elif any(item.created for item in enqueued):
            self.relay.wake()
