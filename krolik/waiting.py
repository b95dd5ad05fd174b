"""Why a pending task is not running yet, in words a user can act on (pure, no I/O).

The API shows it on ``GET /tasks/{id}``. It reads the task and the live workers of the
store's registry: a task may wait for its time, for a worker on its queue, for a worker
with its handler (a rolling deploy, a worker pool started without that module), for its
queue's gates (paused, a limit reached: ``krolik/flow.py``), or just for a free slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from krolik.flow import Hold
from krolik.states import TaskStatus
from krolik.store.records import Task, WorkerInfo


def waiting_reason(task: Task, workers: Sequence[WorkerInfo], now: datetime) -> str | None:
    """None unless the task is pending."""
    if task.status is not TaskStatus.PENDING:
        return None
    if task.run_at > now:
        return f"scheduled: due at {task.run_at.isoformat()}"
    if task.held is not None:
        return f"held: {Hold(task.held).explain(task.queue, task.concurrency_key)}"
    consumers = [worker for worker in workers if task.queue in worker.queues]
    if not consumers:
        return f"no live worker consumes queue {task.queue!r}"
    if not any(task.name in worker.handlers for worker in consumers):
        return f"no live worker of queue {task.queue!r} has a handler named {task.name!r}"
    return "due: waiting for a free worker slot"
