"""The worker: deliveries in, claims in the store, handlers run, outcomes recorded.

Order of events for one delivery: parse -> wait for a free slot -> claim in the
store (guarded: pending -> processing, only tasks whose stored name this worker has
a handler for; each claim takes a new fencing token) -> ack the message -> run the
handler while the lease keeper extends the lease from its own thread -> give the slot
back (while fewer than ``concurrency`` runs are recording) -> record the outcome
(guarded by the run's token). Acking right after the claim means a task may run far
longer than RabbitMQ's consumer timeout; the lease, not the unacked message, protects it.

Whatever goes wrong, and whatever is raised, every delivery is settled (acked,
requeued, dead-lettered, or its tasks handed back to the store) and every slot taken
is given back. Runs are keyed by their ``RunRef`` (task and token), so a stale run of a
task and the current one never stand for each other.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from krolik.broker.base import Broker, Delivery, Subscription
from krolik.events import Observer
from krolik.log import get_logger
from krolik.registry import Registry
from krolik.retry import BackoffPolicy
from krolik.service import LoopService
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.records import RunRef, Task, WorkerInfo
from krolik.worker.executor import Run, StopReason, execute
from krolik.worker.handover import Handover
from krolik.worker.intake import Intake
from krolik.worker.lease_keeper import BeatReport, LeaseKeeper
from krolik.worker.progress import ProgressWriter
from krolik.worker.recorder import Recorder, log_fields
from krolik.worker.slots import Slots
from krolik.worker.stats import WorkerStats

log = get_logger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _RegistryPruner(LoopService):
    """Prunes the registry of workers gone without a word (killed), now and then."""

    name = "worker_registry"

    def __init__(self, store: TaskStore, interval: float) -> None:
        super().__init__(interval)
        self.store = store

    async def tick(self) -> bool:
        await self.store.prune_workers(PRUNE_AFTER_SECONDS)
        return False


PRUNE_AFTER_SECONDS = 3600.0
"""A worker not seen for this long is forgotten; until then GET /workers shows it dead."""


class Worker:
    def __init__(
        self,
        store: TaskStore,
        broker: Broker,
        registry: Registry,
        settings: Settings,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.settings = settings
        self.queues = list(queues or settings.worker.queues)
        self.concurrency = concurrency or settings.worker.concurrency
        self.worker_id = worker_id or new_worker_id()
        self.observer = observer or Observer()
        self.backoff = BackoffPolicy(
            settings.retry.backoff_base_seconds, settings.retry.backoff_max_seconds
        )
        default_max = settings.retry.default_max_attempts
        self.handler_defaults = {
            name: handler.max_attempts or default_max for name, handler in registry.handlers.items()
        }
        """Each handler's name -> its default max_attempts, for the claim statement."""
        self.stats = WorkerStats()
        self.runs: dict[RunRef, Run] = {}
        self.started_at = datetime.now(UTC)
        self._runners: set[asyncio.Task[None]] = set()
        self._slots = Slots(self.concurrency)
        self._accepting = False
        self._recording = 0
        """Runs whose handler returned and whose outcome is being written, slot given back."""
        self._grace_over = False
        self._changed = asyncio.Event()
        self._subscription: Subscription | None = None
        self._log = log.bind(worker_id=self.worker_id)
        self.keeper = LeaseKeeper(
            store,
            worker_id=self.worker_id,
            lease_seconds=settings.worker.lease_seconds,
            interval_seconds=settings.worker.heartbeat_seconds,
            blocked_warn_seconds=settings.worker.blocked_loop_warn_seconds,
            on_report=self._on_beat,
            registration=self.describe,
            observer=self.observer,
        )
        self._pruner = _RegistryPruner(store, max(settings.worker.lease_seconds, 60.0))
        self.intake = Intake(
            store,
            registry,
            settings.worker,
            worker_id=self.worker_id,
            lease_seconds=settings.worker.lease_seconds,
            handler_defaults=self.handler_defaults,
            slots=self._slots,
            stats=self.stats,
            observer=self.observer,
            start_run=self._start,
            accepting=lambda: self._accepting,
            changed=self._notify,
        )
        self.progress = ProgressWriter(store, self.observer)
        self.recorder = Recorder(
            store,
            self.backoff,
            worker_id=self.worker_id,
            lease_seconds=settings.worker.lease_seconds,
            stats=self.stats,
        )

    @property
    def accepting(self) -> bool:
        """Started and not yet told to stop."""
        return self._accepting

    def describe(self) -> WorkerInfo:
        """This worker as the registry shows it (``GET /workers``)."""
        now = datetime.now(UTC)
        return WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.queues),
            handlers=sorted(self.registry.handlers),
            concurrency=self.concurrency,
            running=len(self.runs),
            started_at=self.started_at,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=self.settings.worker.lease_seconds),
        )

    async def start(self) -> None:
        await self.broker.connect()
        await self.store.register_worker(self.describe())
        # The handlers' defaults for new tasks, for the API (which has no handlers) to
        # apply in the statement that inserts a task.
        await self.store.declare_handlers(
            {handler.name: handler.priority for handler in self.registry.handlers.values()}
        )
        self._accepting = True
        self._grace_over = False
        self.keeper.start()
        self._pruner.start()
        prefetch = self.prefetch_messages()
        self._subscription = await self.broker.consume(self.queues, prefetch, self._on_delivery)
        self._log.info(
            "worker_started",
            queues=self.queues,
            concurrency=self.concurrency,
            handlers=sorted(self.registry.handlers),
        )

    def prefetch_messages(self) -> int:
        """The broker's prefetch, in messages, for about max(prefetch_count, concurrency)
        tasks on hand: a message may name up to ``relay.tasks_per_message`` tasks, and
        tasks held here wait while other workers may be idle."""
        tasks = max(self.settings.rabbitmq.prefetch_count, self.concurrency)
        per_message = self.settings.relay.tasks_per_message
        return max(2, -(-tasks // per_message))

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop taking tasks, let running ones finish within the grace, release the rest.

        Releasing retries while the store is away for as long as a lease lasts, and the
        stop waits for that too: a release dropped during a database blip would leave
        the task to the rescuer, an attempt lost."""
        grace = (
            self.settings.worker.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        )
        self._accepting = False
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
        self._log.info("worker_draining", running=len(self.runs), grace_seconds=grace)
        await self._wait_idle(time.monotonic() + grace)
        self._grace_over = True
        for run in list(self.runs.values()):
            run.stop(StopReason.SHUTDOWN)
        await self._wait_idle(time.monotonic() + self.settings.worker.lease_seconds + 1)
        await self.keeper.stop()
        await self._pruner.stop()
        try:
            await self.store.unregister_worker(self.worker_id)
        except Exception as exc:  # its registration expires by itself
            self._log.warning("worker_unregister_failed", error=str(exc))
        self._log.info("worker_stopped", **vars(self.stats))

    async def _wait_idle(self, deadline: float) -> None:
        while (self.runs or self.intake.claiming) and (left := deadline - time.monotonic()) > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return

    def _notify(self) -> None:
        self._changed.set()

    async def wait_for_idle(self, timeout: float = 10.0) -> None:
        """Wait until no task is claimed or running (test signal)."""
        await asyncio.wait_for(self._wait_idle(float("inf")), timeout)

    @property
    def free_slots(self) -> int:
        return self._slots.free

    async def drained(self) -> bool:
        """Nothing running, nothing being claimed, and nothing due that this worker could
        run (a burst worker's cue to stop)."""
        if self.runs or self.intake.claiming:
            return False
        due = await self.store.count_due(self.queues, list(self.registry.handlers))
        return due == 0

    # -- deliveries ----------------------------------------------------------------
    async def _on_delivery(self, delivery: Delivery) -> None:
        await self.intake.take(delivery)

    # -- runs ----------------------------------------------------------------------
    def _start(self, task: Task) -> None:
        self.stats.claimed += 1
        handler = self.registry.handlers[task.name]  # the claim took only names it has
        ref = RunRef.of(task)
        run = Run(
            task=task,
            ref=ref,
            handler=handler,
            timeout_seconds=task.timeout_seconds or handler.timeout_seconds,
            progress_sink=self.progress.sink(task, ref) if handler.wants_context else None,
        )
        if self._grace_over:  # stop() already released the others: release this one too
            run.stop(StopReason.SHUTDOWN)
        self.runs[run.ref] = run
        self.keeper.track(run.ref, run.timeout_seconds)
        runner = asyncio.create_task(self._run(run), name=f"krolik-task-{task.id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    async def _run(self, run: Run) -> None:
        task = run.task
        started = time.monotonic()
        slot_held = True
        passed_on = False
        handover: Handover | None = None
        try:
            self.observer.task_started(task)
            self._log.debug("task_started", **log_fields(run))
            outcome = await execute(run)
            if task.gated:
                # A run of a gated queue keeps its slot while its outcome is written: the
                # slot goes to the best task the queue holds, claimed by the statement that
                # completes the run (or, for another outcome, once the write freed a place).
                handover = await self.intake.offer_slot(task.queue)
            elif self._recording < self.concurrency:
                # The handler is done: its slot takes the next task while the outcome is
                # written (the write waits for a shared statement). At most ``concurrency``
                # runs are being recorded so, or a slow store would let claims run ahead.
                self._recording += 1
                self._slots.give()
                slot_held = False
            recorded = await self.recorder.record(run, outcome, handover)
            if handover is not None:
                offered, handover = handover, None
                if await self._hand_over(offered):
                    slot_held = passed_on = True
            elif task.gated and self.intake.may_hold(task.queue):
                await self._wake(task.queue)  # this worker is stopping: for the others
            self.observer.task_finished(task, recorded, time.monotonic() - started)
        except Exception:
            self._log.exception("task_run_crashed", **log_fields(run))
        finally:
            if handover is not None:  # the outcome's write raised: the extra slots go back
                self._slots.give(handover.extra)
            self.progress.forget(run.ref)
            self.keeper.untrack(run.ref)
            self.runs.pop(run.ref, None)
            if passed_on:
                pass  # the slot is the run's that took it
            elif slot_held:
                self._slots.give()
            else:
                self._recording -= 1
            self._notify()

    async def _wake(self, queue: str) -> None:
        try:
            await self.store.wake(queue)
        except Exception as exc:
            self._log.warning("wake_failed", queue=queue, error=str(exc))

    async def _hand_over(self, handover: Handover) -> bool:
        """A run of a gated queue ended: its slot goes to the best held task at once
        (should this fail, the waker finds it within seconds). True when the slot the
        run held went to a new run."""
        try:
            return await self.intake.hand_over(handover)
        except Exception as exc:
            self._log.warning("wake_failed", queue=handover.queue, error=str(exc))
            return False

    # -- leases ----------------------------------------------------------------------
    def _on_beat(self, report: BeatReport) -> None:
        """Act on what the lease keeper found: stop runs whose lease is lost (or that ran
        past their timeout without yielding), and runs asked to stop by a cancel."""
        if report.error is not None:
            self._log.warning(
                "heartbeat_failed", error=report.error, silent_seconds=report.silent_seconds
            )
            if report.silent_seconds > self.settings.worker.lease_seconds:
                # No lease could be extended for a whole lease: every one may have been
                # rescued and taken by another worker.
                for ref in report.sent:
                    self._stop_run(ref, StopReason.LEASE_LOST, "lease_lost")
            return
        for ref in report.lost():
            self._stop_run(ref, StopReason.LEASE_LOST, "lease_lost")
        for ref in report.let_go:
            self._stop_run(ref, StopReason.LEASE_LOST, "lease_let_go")
        for ref, cancel_requested in report.kept.items():
            if cancel_requested:
                self._stop_run(ref, StopReason.CANCEL_REQUESTED, None)

    def _stop_run(self, ref: RunRef, reason: StopReason, event: str | None) -> None:
        run = self.runs.get(ref)
        if run is None or run.handler_done:
            # Finished meanwhile, or its handler returned and its outcome is being written:
            # the beat raced the completion, and the write's own guard decides.
            return
        if event is not None and run.stop_reason is None:
            self._log.warning(event, task_id=ref.task_id, attempt=ref.attempt)
        run.stop(reason)
