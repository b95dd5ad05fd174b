"""The store seam: what the API, the worker and the maintenance loops need from storage.

The store is the source of truth. Every method that changes a task is one guarded
statement (plus, in the same transaction, the outbox row that dispatches it), so a
caller holding stale knowledge changes nothing and learns so from the return value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from krolik.flow import QueueGates
from krolik.states import TaskStatus
from krolik.store.records import (
    ApiKey,
    Attempt,
    Delivery,
    DeliveryAnswer,
    DuePlan,
    Enqueued,
    NewSchedule,
    NewTask,
    OutboxEntry,
    OutboxStats,
    PruneRule,
    QueueStats,
    RescuedTask,
    RunRef,
    Schedule,
    ScheduledRun,
    ScheduleTick,
    Task,
    TaskFilter,
    WorkerInfo,
)


class TaskStore(ABC):
    """Storage of tasks and of the outbox that dispatches them."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    def sibling(self) -> TaskStore:
        """A new store of the same kind on the same database, with connections of its own,
        for another thread's event loop (the worker's lease keeper)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    # -- producers -----------------------------------------------------------------
    @abstractmethod
    async def enqueue(
        self,
        new_tasks: Sequence[NewTask],
        *,
        claim_outbox_seconds: float | None = None,
        refuse_mismatch: bool = False,
    ) -> list[Enqueued]:
        """Insert tasks and their outbox rows in one transaction.

        An idempotency key seen before (for the same caller) gives back its task, not a
        new one; with another request body it is a mismatch (``Enqueued.mismatch``), or,
        with ``refuse_mismatch``, ``IdempotencyConflict`` and nothing written at all.

        With ``claim_outbox_seconds``, the outbox rows of created tasks that are due at
        once are written already claimed for that long and returned in
        ``Enqueued.outbox``: the caller's relay publishes them straight after the commit,
        without a claim round trip; if it never does, any relay takes them when the
        claim runs out. Tasks due later are left to the relays' polling as always.
        """

    async def listen_ended(
        self, handler: Callable[[int, Task | None], None], on_lost: Callable[[], None]
    ) -> Callable[[], Awaitable[None]] | None:
        """The store's own word of each task that ended, at commit, if it has one:
        ``handler(task_id, record)`` (the record as it ended, or None when the word held
        only the id) until the returned close is awaited, ``on_lost`` if that stops by
        itself. None: it has none (the broker's change notices serve alone)."""
        return None

    @abstractmethod
    async def get(self, task_id: int) -> Task | None: ...

    @abstractmethod
    async def get_many(self, task_ids: Sequence[int]) -> list[Task]:
        """The tasks of these ids that exist, in no particular order (one statement)."""

    @abstractmethod
    async def attempts_of(self, task_id: int) -> list[Attempt]:
        """Every ended run of the task, oldest first (the running one is the task's own)."""

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
        """Send a failed, cancelled or expired task back to pending with fresh attempts
        (and no expiry)."""

    # -- workers ---------------------------------------------------------------------
    @abstractmethod
    async def claim_many(
        self,
        task_ids: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task | None]:
        """pending -> processing for due tasks whose stored name is in ``handlers``; one
        answer per id, in order (None: not claimable by this worker). When an id appears
        twice, only its first claim can succeed.

        ``handlers`` maps each handler name the worker has to its default max_attempts:
        a task enqueued without max_attempts takes its handler's here, so every running
        task has a fixed limit. Each claim takes the task's next fencing token.
        """

    async def claim(
        self, task_id: int, worker_id: str, lease_seconds: float, handlers: Mapping[str, int]
    ) -> Task | None:
        [task] = await self.claim_many([task_id], worker_id, lease_seconds, handlers)
        return task

    @abstractmethod
    async def heartbeat(
        self, runs: Sequence[RunRef], lease_seconds: float, *, worker_id: str | None = None
    ) -> dict[RunRef, bool]:
        """Extend the leases of runs still owned; maps each such run -> cancel requested.

        A run missing from the answer has lost its lease and must not finish. With
        ``worker_id``, every lease that worker holds is extended too: its event loop is
        stalled, and runs it claimed meanwhile are not registered yet.
        """

    @abstractmethod
    async def record_progress(self, reports: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        """Write each run's progress report on its task, if the run still owns it; one
        answer per run, in order. Changes no state."""

    @abstractmethod
    async def complete_many(self, completions: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        """processing -> done for each run still owned; one answer per run, in order."""

    async def complete(self, run: RunRef, result: Any) -> bool:
        [done] = await self.complete_many([(run, result)])
        return done

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
    async def snooze(self, run: RunRef, delay_seconds: float) -> TaskStatus | None:
        """processing -> pending, due after ``delay_seconds``, the attempt not counted: the
        handler asked to run again later. Returns where the task went, as ``retry_later``."""

    @abstractmethod
    async def dispatch_later(self, task_ids: Sequence[int], delay_seconds: float) -> list[int]:
        """Dispatch pending tasks again after ``delay_seconds`` (a new outbox row each);
        the ids that were pending. For tasks a worker received but will not run now: a
        handler it lacks, or a packed message it could not take whole."""

    @abstractmethod
    async def fail_unrunnable(self, task_id: int, error: str) -> bool:
        """pending -> failed for a task no worker can run (e.g. unknown handler)."""

    # -- the worker registry ---------------------------------------------------------
    @abstractmethod
    async def register_worker(self, worker: WorkerInfo) -> None:
        """Record (or record again) a worker process; it counts as alive until
        ``worker.expires_at`` unless its heartbeats move that on."""

    @abstractmethod
    async def touch_worker(self, worker_id: str, running: int, lease_seconds: float) -> bool:
        """A worker's heartbeat: seen now, alive for ``lease_seconds`` more. False if its
        row is gone (pruned after it was thought dead): it should register again."""

    @abstractmethod
    async def unregister_worker(self, worker_id: str) -> None: ...

    @abstractmethod
    async def list_workers(self, *, include_expired: bool = False) -> list[WorkerInfo]:
        """Workers alive now (and, with ``include_expired``, those not seen for a while),
        oldest first."""

    @abstractmethod
    async def prune_workers(self, expired_for_seconds: float) -> int:
        """Forget workers whose registration expired that long ago."""

    # -- maintenance -----------------------------------------------------------------
    @abstractmethod
    async def rescue_expired(self, limit: int) -> list[RescuedTask]:
        """Return runs whose lease expired to pending, or fail them if out of attempts."""

    @abstractmethod
    async def expire_all_leases(self) -> int:
        """End every running lease now, for the rescuer to take (single-owner start-up)."""

    @abstractmethod
    async def expire_overdue(self, limit: int, task_ids: Sequence[int] | None = None) -> list[Task]:
        """pending -> expired for tasks whose ``expires_at`` has passed (of ``task_ids``
        only, when given); their outbox rows go. The tasks expired, as they ended."""

    @abstractmethod
    async def stale_queues(self, older_than_seconds: float) -> list[str]:
        """Queues holding pending tasks due for ``older_than_seconds`` and untouched as
        long, with no outbox row: their message went out, and may have been lost."""

    @abstractmethod
    async def redispatch_stale(
        self, older_than_seconds: float, limit: int, queues: Sequence[str] | None = None
    ) -> int:
        """Queue an outbox row again for such tasks (of ``queues`` only, when given).

        Only the caller knows whether their messages are really gone (the broker's
        queue is empty), so it picks the queues."""

    @abstractmethod
    async def queue_stats(self, stuck_after_seconds: float) -> list[QueueStats]:
        """Counts per queue, read cheaply (partial indexes; finished tasks of the last hour)."""

    @abstractmethod
    async def outbox_stats(self) -> OutboxStats: ...

    @abstractmethod
    async def count_due(self, queues: Sequence[str], names: Sequence[str]) -> int:
        """Pending tasks due now in ``queues`` whose name is one of ``names`` (what a
        worker with those handlers could run now)."""

    @abstractmethod
    async def count_pending(self, queue: str) -> int:
        """Pending tasks of ``queue`` (due or not), for the per-queue bound."""

    # -- retention -------------------------------------------------------------------
    @abstractmethod
    async def prune(
        self, rule: PruneRule, limit: int, *, seconds_limit: float | None = None
    ) -> int:
        """Delete up to ``limit`` finished tasks the rule names (oldest first), with their
        attempts, deliveries and outbox rows; how many went. Never a task not final.
        With ``seconds_limit``, a statement that runs longer is cancelled where the
        database can (``StoreConflict``, nothing deleted)."""

    @abstractmethod
    async def count_prunable(self, rule: PruneRule) -> dict[str, int]:
        """What ``prune`` would delete under the rule, all batches together, by queue."""

    # -- flow control ------------------------------------------------------------------
    @abstractmethod
    async def get_gates(self, queue: str) -> QueueGates:
        """The queue's pause and limits (none for a queue never set)."""

    @abstractmethod
    async def list_gates(self) -> list[QueueGates]:
        """Every queue whose gates were ever set."""

    @abstractmethod
    async def set_gates(self, queue: str, changes: Mapping[str, Any]) -> QueueGates:
        """Change some of ``GATE_FIELDS`` (None lifts a limit); the queue as it is now.
        The caller wakes the held tasks a change lets start (``wake``)."""

    @abstractmethod
    async def declare_gates(self, defaults: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Write the settings' limits (``FlowSettings.queues``) of queues whose limits
        are still the settings' (or not set at all); the queues written."""

    @abstractmethod
    async def complete_and_claim_held(
        self,
        run: RunRef,
        result: Any,
        queue: str,
        most: int,
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> tuple[bool, list[Task]]:
        """``complete`` a run of a gated queue and, in the same commit, ``claim_held``
        up to ``most`` tasks of its queue (when it completed): the slot it frees is taken
        with no moment in which it is free for nobody and no round trip between. Whether
        it completed, and what was claimed."""

    @abstractmethod
    async def declare_handlers(self, priorities: Mapping[str, int | None]) -> None:
        """Write what handlers' code declares for their new tasks (their default
        priority, None: none), read by every insert of a task of that name."""

    @abstractmethod
    async def claim_held(
        self,
        queue: str,
        most: int,
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task]:
        """Claim up to ``most`` of the best held tasks of a gated queue, as its gates
        allow (what a worker whose gated run just ended takes into its free slot)."""

    @abstractmethod
    async def wake(self, queue: str) -> int:
        """Dispatch again as many held tasks of ``queue`` as its gates let start now
        (best first); how many."""

    @abstractmethod
    async def held_queues(self) -> dict[str, float | None]:
        """Queues with held tasks, each with the seconds until its rate window frees a
        start (None: not bound by a rate)."""

    @abstractmethod
    async def held_counts(self) -> dict[str, dict[str, int]]:
        """Held tasks by queue and reason (``Hold``)."""

    # -- schedules -------------------------------------------------------------------
    @abstractmethod
    async def create_schedule(self, new: NewSchedule) -> Schedule:
        """Raise ``InvalidTransition`` if a schedule of that name exists."""

    @abstractmethod
    async def declare_schedules(self, declared: Sequence[NewSchedule]) -> list[str]:
        """Write the schedules declared in code: new ones are created, changed ones take
        their new definition and next run, unchanged ones keep theirs (and their pause).
        The names refused because a schedule of the API holds them."""

    @abstractmethod
    async def get_schedule(self, name: str) -> Schedule | None: ...

    @abstractmethod
    async def list_schedules(self) -> list[Schedule]:
        """Every schedule, from code and from the API, by name."""

    @abstractmethod
    async def change_schedule(self, name: str, changes: Mapping[str, Any]) -> Schedule | None:
        """Set some of its definition, ``paused`` or ``next_run_at``; None if absent."""

    @abstractmethod
    async def delete_schedule(self, name: str) -> bool:
        """Delete it and its ticks (the tasks it made stay)."""

    @abstractmethod
    async def schedule_ticks(
        self, name: str, *, before: datetime | None = None, limit: int = 50
    ) -> list[ScheduleTick]:
        """The ticks that made tasks, newest first (those before ``before``)."""

    @abstractmethod
    async def next_tick_in(self) -> float | None:
        """Seconds until the earliest schedule not paused is due (0 if one is), by the
        database's clock; None without any."""

    @abstractmethod
    async def run_due_schedules(
        self, plan: Callable[[Schedule, datetime], DuePlan], limit: int
    ) -> list[ScheduledRun]:
        """For up to ``limit`` due schedules (not paused, next run passed) that no other
        scheduler holds: ``plan(schedule, now)`` says which ticks to run; each tick not
        made before makes its task (with its outbox row) and the schedule moves to the
        plan's next run, all in one transaction. A tick is made once, whoever asks."""

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
    async def claim_outbox(
        self, limit: int, claim_seconds: float, *, skip_queues: Sequence[str] = ()
    ) -> list[OutboxEntry]:
        """Take due outbox rows for ``claim_seconds``; other relays skip them meanwhile.

        Rows of ``skip_queues`` (queues the relay cannot publish to for now) are left."""

    @abstractmethod
    async def release_outbox(self, entry_ids: Sequence[int]) -> None:
        """Give claimed outbox rows back at once (publishing failed)."""

    @abstractmethod
    async def delete_outbox(self, entry_ids: Sequence[int]) -> None:
        """Forget outbox rows whose publishing the broker confirmed."""

    # -- webhooks --------------------------------------------------------------------
    # Delivery rows are written by the database itself, in the statement that ends a task
    # with a webhook_url (a trigger), so every path to a final state writes one.
    @abstractmethod
    async def claim_deliveries(self, limit: int, claim_seconds: float) -> list[Delivery]:
        """Take pending deliveries that are due for ``claim_seconds``, counting an attempt
        each; other senders skip them meanwhile, and take them again when it runs out."""

    @abstractmethod
    async def record_deliveries(self, answers: Sequence[DeliveryAnswer]) -> list[bool]:
        """Record how each claimed attempt went: delivered, due again later, or given up.
        One answer per item, False where the claim was no longer the latest."""

    @abstractmethod
    async def deliveries_of(self, task_id: int) -> list[Delivery]:
        """Every delivery of the task, oldest first."""
