"""Hooks around task execution, the relay and the API, for metrics and tracing.

The worker, relay and API call an ``Observer``; they never import a metrics
library. ``Observers`` fans one call out to several and keeps a faulty observer
from breaking the work it watches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from krolik.log import get_logger
from krolik.states import TaskStatus
from krolik.store.records import RescuedTask, Task

log = get_logger(__name__)


class Observer:
    """No-op hooks; override the ones you need."""

    def task_submitted(self, task: Task) -> None:
        """A new task was committed (idempotent repeats are not counted)."""

    def task_started(self, task: Task) -> None:
        """A worker claimed the task and is about to run its handler."""

    def task_finished(self, task: Task, result: str, seconds: float) -> None:
        """The run ended; ``result`` is what was recorded: succeeded, failed, retried,
        cancelled, released, snoozed or abandoned (the lease was lost)."""

    def task_expired(self, task: Task) -> None:
        """A pending task was not started by its ``expires_at``: it ended expired."""

    def tasks_pruned(self, status: TaskStatus, count: int, seconds: float) -> None:
        """The cleaner deleted ``count`` finished tasks of ``status`` in one batch that
        took ``seconds``."""

    def task_rescued(self, rescued: RescuedTask) -> None:
        """The rescuer took a run whose lease expired (``rescued.status``: where it went)."""

    def task_changed(self, task: Task) -> None:
        """The task changed outside the start and end of a run: cancelled or retried
        through the API, or its handler reported progress."""

    def message_dead_lettered(self, reason: str) -> None:
        """A delivery was moved to the dead-letter queue."""

    def outbox_published(self, count: int) -> None:
        """The relay published ``count`` messages, all confirmed."""

    def queue_publish_failed(self, queue: str) -> None:
        """The relay could not publish to ``queue`` (others may flow on); it backs off."""

    def event_loop_blocked(self, seconds: float) -> None:
        """A worker's event loop did not run for ``seconds`` (a handler blocked it)."""

    def tasks_redispatched(self, count: int) -> None:
        """Due tasks whose messages were lost (their queue is empty) were sent again."""

    def outbox_publish_failed(self, count: int) -> None:
        """The relay could not publish a batch of ``count`` (0: it could not even
        connect); it will try again."""

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        """One try of a webhook delivery: ``delivered``, ``retried`` (it will be tried
        again) or ``failed`` (given up); ``seconds`` the request's time."""


class Observers(Observer):
    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _call(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                log.exception("observer_failed", hook=hook, observer=type(observer).__name__)

    def task_submitted(self, task: Task) -> None:
        self._call("task_submitted", task)

    def task_started(self, task: Task) -> None:
        self._call("task_started", task)

    def task_finished(self, task: Task, result: str, seconds: float) -> None:
        self._call("task_finished", task, result, seconds)

    def task_rescued(self, rescued: RescuedTask) -> None:
        self._call("task_rescued", rescued)

    def task_expired(self, task: Task) -> None:
        self._call("task_expired", task)

    def tasks_pruned(self, status: TaskStatus, count: int, seconds: float) -> None:
        self._call("tasks_pruned", status, count, seconds)

    def task_changed(self, task: Task) -> None:
        self._call("task_changed", task)

    def message_dead_lettered(self, reason: str) -> None:
        self._call("message_dead_lettered", reason)

    def outbox_published(self, count: int) -> None:
        self._call("outbox_published", count)

    def outbox_publish_failed(self, count: int) -> None:
        self._call("outbox_publish_failed", count)

    def queue_publish_failed(self, queue: str) -> None:
        self._call("queue_publish_failed", queue)

    def event_loop_blocked(self, seconds: float) -> None:
        self._call("event_loop_blocked", seconds)

    def tasks_redispatched(self, count: int) -> None:
        self._call("tasks_redispatched", count)

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        self._call("webhook_attempted", outcome, seconds)
