"""The store seam: what the API, the worker and the maintenance loops need from storage.

The store is the source of truth. Every method that changes a task is one guarded
statement (plus, in the same transaction, the outbox row that dispatches it), so a
caller holding stale knowledge changes nothing and learns so from the return value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from krolik.states import TaskStatus


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to enqueue. ``run_at`` None means as soon as possible."""

    name: str
    queue: str
    payload: Any
    max_attempts: int | None = None
    """None: the handler's default, written in when a worker first claims the task."""
    timeout_seconds: float | None = None
    run_at: datetime | None = None
    delay_seconds: float | None = None
    idempotency_key: str | None = None
    request_id: str | None = None
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    name: str
    queue: str
    payload: Any
    status: TaskStatus
    result: Any
    error: str | None
    traceback: str | None
    attempts: int
    max_attempts: int | None
    timeout_seconds: float | None
    idempotency_key: str | None
    request_id: str | None
    created_by: str | None
    worker_id: str | None
    cancel_requested: bool
    run_at: datetime
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Enqueued:
    task: Task
    created: bool
    """False when an idempotency key matched an existing task."""
    outbox: OutboxEntry | None = None
    """The task's outbox row, already claimed for the caller to publish (see ``enqueue``)."""


@dataclass(frozen=True, slots=True)
class RunRef:
    """One claimed run of a task: only this worker, at this attempt, may finish it."""

    task_id: int
    attempt: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class Claim:
    task_id: int
    default_max_attempts: int


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    task_id: int
    queue: str
    name: str


@dataclass(frozen=True, slots=True)
class RescuedTask:
    task_id: int
    status: TaskStatus
    attempts: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue at a glance; ``*_last_hour`` count tasks that finished in the last hour."""

    queue: str
    pending: int
    """Due and waiting for a worker."""
    scheduled: int
    """Waiting for their run_at (delays and retry backoff)."""
    processing: int
    stuck: int
    """Processing for longer than the stuck threshold."""
    done_last_hour: int
    failed_last_hour: int
    cancelled_last_hour: int
    oldest_pending_at: datetime | None
    """When the oldest due pending task became due."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    backlog: int
    """Due outbox rows not yet published."""
    oldest_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: only a hash of the secret is kept."""

    id: int
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: TaskStatus | None = None
    name: str | None = None
    queue: str | None = None


class TaskStore(ABC):
    """Storage of tasks and of the outbox that dispatches them."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    # -- producers -----------------------------------------------------------------
    @abstractmethod
    async def enqueue(
        self, new_tasks: Sequence[NewTask], *, claim_outbox_seconds: float | None = None
    ) -> list[Enqueued]:
        """Insert tasks and their outbox rows in one transaction.

        With ``claim_outbox_seconds``, the outbox rows of created tasks that are due at
        once are written already claimed for that long and returned in
        ``Enqueued.outbox``: the caller's relay publishes them straight after the commit,
        without a claim round trip; if it never does, any relay takes them when the
        claim runs out. Tasks due later are left to the relays' polling as always.
        """

    @abstractmethod
    async def get(self, task_id: int) -> Task | None: ...

    @abstractmethod
    async def list_tasks(
        self, task_filter: TaskFilter, *, before_id: int | None, limit: int
    ) -> list[Task]:
        """Tasks newest first, with ids below ``before_id`` when given."""

    @abstractmethod
    async def cancel(self, task_id: int) -> Task:
        """Cancel a pending task, or ask a running one to stop.

        Raises ``TaskNotFound`` or ``InvalidTransition`` (already final).
        """

    @abstractmethod
    async def retry(self, task_id: int) -> Task:
        """Send a failed or cancelled task back to pending with fresh attempts."""

    # -- workers ---------------------------------------------------------------------
    @abstractmethod
    async def claim(
        self, task_id: int, worker_id: str, lease_seconds: float, default_max_attempts: int
    ) -> Task | None:
        """pending -> processing for a due task; None if it is not claimable.

        A task enqueued without max_attempts takes ``default_max_attempts`` (the
        handler's) here, so every running task has a fixed limit.
        """

    @abstractmethod
    async def claim_many(
        self, claims: Sequence[Claim], worker_id: str, lease_seconds: float
    ) -> list[Task | None]:
        """``claim`` for many tasks at once; one answer per claim, in order.

        When one id appears twice, only its first claim can succeed.
        """

    @abstractmethod
    async def heartbeat(self, runs: Sequence[RunRef], lease_seconds: float) -> dict[int, bool]:
        """Extend the leases of runs still owned; maps task id -> cancel requested.

        A run missing from the answer has lost its lease and must not finish.
        """

    @abstractmethod
    async def complete(self, run: RunRef, result: Any) -> bool: ...

    @abstractmethod
    async def complete_many(self, completions: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        """``complete`` for many runs at once; one answer per run, in order."""

    @abstractmethod
    async def retry_later(
        self, run: RunRef, error: str, traceback: str | None, delay_seconds: float
    ) -> TaskStatus | None:
        """processing -> pending, due after ``delay_seconds``, with the error kept.

        Returns where the task went: pending, or cancelled when a cancel was requested
        while it ran (it is not run again); None when this run no longer owns it."""

    @abstractmethod
    async def fail(self, run: RunRef, error: str, traceback: str | None) -> bool:
        """processing -> failed: the dead-letter state."""

    @abstractmethod
    async def mark_cancelled(self, run: RunRef) -> bool: ...

    @abstractmethod
    async def release(self, run: RunRef) -> TaskStatus | None:
        """processing -> pending at once, not counting the attempt (worker shutdown).

        Returns where the task went, as ``retry_later`` does."""

    @abstractmethod
    async def fail_unrunnable(self, task_id: int, error: str) -> bool:
        """pending -> failed for a task no worker can run (e.g. unknown handler)."""

    # -- maintenance -----------------------------------------------------------------
    @abstractmethod
    async def rescue_expired(self, limit: int) -> list[RescuedTask]:
        """Return runs whose lease expired to pending, or fail them if out of attempts."""

    @abstractmethod
    async def expire_all_leases(self) -> int:
        """End every running lease now, for the rescuer to take (single-owner start-up)."""

    @abstractmethod
    async def redispatch_stale(self, older_than_seconds: float, limit: int) -> int:
        """Queue an outbox row again for due pending tasks that have none."""

    @abstractmethod
    async def queue_stats(self, stuck_after_seconds: float) -> list[QueueStats]:
        """Counts per queue, read cheaply (partial indexes; finished tasks of the last hour)."""

    @abstractmethod
    async def outbox_stats(self) -> OutboxStats: ...

    @abstractmethod
    async def count_pending(self, queue: str) -> int:
        """Pending tasks of ``queue`` (due or not), for the per-queue bound."""

    # -- API keys --------------------------------------------------------------------
    @abstractmethod
    async def create_api_key(self, name: str, scope: str, key_hash: str) -> ApiKey:
        """Raise ``InvalidTransition`` if a key of that name exists."""

    @abstractmethod
    async def list_api_keys(self) -> list[ApiKey]: ...

    @abstractmethod
    async def revoke_api_key(self, name: str) -> bool:
        """Revoke an active key; False if there is none of that name."""

    @abstractmethod
    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        """The active key with this hash, if any."""

    # -- relay -----------------------------------------------------------------------
    @abstractmethod
    async def claim_outbox(self, limit: int, claim_seconds: float) -> list[OutboxEntry]:
        """Take due outbox rows for ``claim_seconds``; other relays skip them meanwhile."""

    @abstractmethod
    async def release_outbox(self, entry_ids: Sequence[int]) -> None:
        """Give claimed outbox rows back at once (publishing failed)."""

    @abstractmethod
    async def delete_outbox(self, entry_ids: Sequence[int]) -> None:
        """Forget outbox rows whose publishing the broker confirmed."""
