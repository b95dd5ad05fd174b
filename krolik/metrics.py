"""Prometheus metrics: an Observer for task events plus gauges read from the store.

Counters and histograms are fed by the hooks of ``krolik.events``; the worker,
relay and API never touch prometheus-client themselves. Gauges (backlog, stuck
tasks, outbox lag) come from the store at scrape time, at most once every few
seconds, so scraping stays cheap. When ``PROMETHEUS_MULTIPROC_DIR`` is set,
several processes serving one port are summed by prometheus-client's
multiprocess collector.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from krolik.events import Observer
from krolik.store.records import OutboxStats, QueueStats, RescuedTask, Task

if TYPE_CHECKING:
    from krolik.states import TaskStatus
    from krolik.store.replica import ReplicaReads, StatusReads

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "StoreGauges"]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
DEAD_LETTER_REASONS = ("malformed", "unknown_handler", "missing_task")  # what the worker reports
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics(Observer):
    """Every counter and histogram of a Krolik process, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        by_task = ["name", "queue"]

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.submitted = counter("krolik_tasks_submitted", "Tasks created.", by_task)
        self.started = counter("krolik_tasks_started", "Runs started by a worker.", by_task)
        self.succeeded = counter("krolik_tasks_succeeded", "Runs that ended done.", by_task)
        self.failed = counter(
            "krolik_tasks_failed", "Runs that ended failed (no attempts left).", by_task
        )
        self.retried = counter(
            "krolik_tasks_retried", "Runs that failed and were scheduled again.", by_task
        )
        self.cancelled = counter("krolik_tasks_cancelled", "Runs stopped by a cancel.", by_task)
        self.released = counter(
            "krolik_tasks_released", "Runs given back by a worker shutting down.", by_task
        )
        self.snoozed = counter(
            "krolik_tasks_snoozed", "Runs whose handler asked to run again later.", by_task
        )
        self.expired = counter(
            "krolik_tasks_expired", "Pending tasks not started by their expires_at.", by_task
        )
        self.pruned = counter(
            "krolik_tasks_pruned",
            "Finished tasks deleted by the cleaner after their retention.",
            ["status"],
        )
        self.prune_batches = Histogram(
            "krolik_prune_batch_duration_seconds",
            "Time of one cleaner batch (one DELETE statement and its cascades).",
            [],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.rescued = counter(
            "krolik_tasks_rescued", "Runs whose lease expired, taken by the rescuer.", ["status"]
        )
        self.dead_lettered = counter(
            "krolik_messages_dead_lettered", "Messages moved to the dead-letter queue.", ["reason"]
        )
        # Exported at 0 from the start: a series born at 1 hides its first increment
        # from increase(), and a dead letter is rare enough to be that first one.
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason)
        self.published = counter(
            "krolik_relay_published", "Task messages the relay published, confirmed.", []
        )
        self.publish_errors = counter(
            "krolik_relay_publish_errors", "Relay batches that could not be published.", []
        )
        self.queue_publish_errors = counter(
            "krolik_relay_queue_publish_errors",
            "Messages of one queue the relay could not publish (the queue backs off).",
            ["queue"],
        )
        self.redispatched = counter(
            "krolik_tasks_redispatched",
            "Due tasks sent again because their queue had lost their messages.",
            [],
        )
        self.webhooks = counter(
            "krolik_webhook_attempts",
            "Tries of webhook deliveries, by outcome (delivered, retried, failed: given up).",
            ["outcome"],
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)
        self.webhook_latency = Histogram(
            "krolik_webhook_request_duration_seconds",
            "Time of one webhook request, until its answer or failure.",
            [],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.loop_blocked = Histogram(
            "krolik_worker_event_loop_blocked_seconds",
            "Stalls of a worker's event loop longer than the warning threshold.",
            [],
            buckets=(1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=self.registry,
        )
        self.duration = Histogram(
            "krolik_task_duration_seconds",
            "Time a handler ran.",
            ["name"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "krolik_task_queue_wait_seconds",
            "Time from due (run_at) to start.",
            ["name"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = counter(
            "krolik_http_requests", "HTTP requests answered.", ["method", "route", "status"]
        )
        self.http_latency = Histogram(
            "krolik_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._by_result = {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retried": self.retried,
            "cancelled": self.cancelled,
            "released": self.released,
            "snoozed": self.snoozed,
        }

    def labelled(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once: the hooks run for every task."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def http_request_done(self, method: str, template: str, status: int, seconds: float) -> None:
        """One HTTP request answered: counted by route template and status, timed."""
        self.labelled(self.http_requests, method, template, str(status)).inc()
        self.labelled(self.http_latency, method, template).observe(seconds)

    # -- Observer hooks --------------------------------------------------------------
    def task_submitted(self, task: Task) -> None:
        self.labelled(self.submitted, task.name, task.queue).inc()

    def task_started(self, task: Task) -> None:
        self.labelled(self.started, task.name, task.queue).inc()
        if task.started_at is not None:
            wait = (task.started_at - task.run_at).total_seconds()
            self.labelled(self.queue_wait, task.name).observe(max(wait, 0.0))

    def task_finished(self, task: Task, result: str, seconds: float) -> None:
        counter = self._by_result.get(result)
        if counter is not None:
            self.labelled(counter, task.name, task.queue).inc()
        if result in ("succeeded", "failed", "retried"):
            self.labelled(self.duration, task.name).observe(seconds)

    def task_expired(self, task: Task) -> None:
        self.labelled(self.expired, task.name, task.queue).inc()

    def tasks_pruned(self, status: TaskStatus, count: int, seconds: float) -> None:
        self.labelled(self.pruned, status.value).inc(count)
        self.prune_batches.observe(seconds)

    def task_rescued(self, rescued: RescuedTask) -> None:
        self.rescued.labels(rescued.status.value).inc()

    def message_dead_lettered(self, reason: str) -> None:
        self.dead_lettered.labels(reason).inc()

    def outbox_published(self, count: int) -> None:
        self.published.inc(count)

    def outbox_publish_failed(self, count: int) -> None:
        self.publish_errors.inc()

    def queue_publish_failed(self, queue: str) -> None:
        self.labelled(self.queue_publish_errors, queue).inc()

    def event_loop_blocked(self, seconds: float) -> None:
        self.loop_blocked.observe(seconds)

    def tasks_redispatched(self, count: int) -> None:
        self.redispatched.inc(count)

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        self.labelled(self.webhooks, outcome).inc()
        self.webhook_latency.observe(seconds)

    # -- exposition ------------------------------------------------------------------
    def exposition(self, extra: Collector | None = None) -> bytes:
        """The text format for a scrape; in multiprocess mode, summed over processes."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = self.registry
        output = generate_latest(registry)
        if extra is not None:
            extra_registry = CollectorRegistry()
            extra_registry.register(extra)
            output += generate_latest(extra_registry)
        return output


@dataclass(eq=False)  # registries key collectors by identity
class StoreGauges(Collector):
    """Gauges read from the store: refreshed by ``refresh`` (async), served from memory."""

    store: StatusReads
    """The store, or a read replica while it keeps up (``store/replica.py``)."""
    stuck_after_seconds: float
    max_age_seconds: float = 5.0
    replica: ReplicaReads | None = None
    queues: list[QueueStats] = field(default_factory=list)
    outbox: OutboxStats | None = None
    refreshed_at: float = 0.0

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self.refreshed_at < self.max_age_seconds:
            return
        self.queues = await self.store.queue_stats(self.stuck_after_seconds)
        self.outbox = await self.store.outbox_stats()
        if self.replica is not None:
            await self.replica.check()
        self.refreshed_at = time.monotonic()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = datetime.now(UTC)
        tasks = GaugeMetricFamily(
            "krolik_tasks", "Tasks now, by queue and status.", labels=["queue", "status"]
        )
        finished = GaugeMetricFamily(
            "krolik_tasks_finished_last_hour",
            "Tasks that finished in the last hour.",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "krolik_oldest_pending_age_seconds",
            "Age of the oldest due pending task.",
            labels=["queue"],
        )
        stuck = GaugeMetricFamily(
            "krolik_stuck_tasks",
            f"Tasks processing for longer than {self.stuck_after_seconds:g} s.",
            labels=["queue"],
        )
        for item in self.queues:
            tasks.add_metric([item.queue, "pending"], item.pending)
            tasks.add_metric([item.queue, "scheduled"], item.scheduled)
            tasks.add_metric([item.queue, "processing"], item.processing)
            finished.add_metric([item.queue, "done"], item.done_last_hour)
            finished.add_metric([item.queue, "failed"], item.failed_last_hour)
            finished.add_metric([item.queue, "cancelled"], item.cancelled_last_hour)
            finished.add_metric([item.queue, "expired"], item.expired_last_hour)
            age = (now - item.oldest_pending_at).total_seconds() if item.oldest_pending_at else 0
            oldest.add_metric([item.queue], max(age, 0.0))
            stuck.add_metric([item.queue], item.stuck)
        yield from (tasks, finished, oldest, stuck)
        backlog = GaugeMetricFamily("krolik_outbox_backlog", "Due outbox rows not yet published.")
        lag = GaugeMetricFamily(
            "krolik_outbox_lag_seconds", "Age of the oldest due outbox row (0 when none)."
        )
        if self.outbox is not None:
            backlog.add_metric([], self.outbox.backlog)
            oldest_due = self.outbox.oldest_due_at
            lag.add_metric([], max((now - oldest_due).total_seconds(), 0.0) if oldest_due else 0)
        yield from (backlog, lag)
        if self.replica is not None:
            state = self.replica.state
            usable = GaugeMetricFamily(
                "krolik_db_replica_usable",
                "1 while the read replica serves the API's reads (keeps up, reachable).",
            )
            usable.add_metric([], 1.0 if state.usable else 0.0)
            yield usable
            if state.lag_seconds is not None:
                replica_lag = GaugeMetricFamily(
                    "krolik_db_replica_lag_seconds", "Replay lag of the read replica."
                )
                replica_lag.add_metric([], state.lag_seconds)
                yield replica_lag
