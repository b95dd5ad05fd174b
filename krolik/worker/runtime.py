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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from krolik.batching import MicroBatcher
from krolik.broker.base import Broker, Delivery, MalformedMessage, Subscription, TaskMessage
from krolik.errors import StoreConflict, StoreError, StoreUnavailable
from krolik.events import Observer
from krolik.log import get_logger
from krolik.registry import Registry
from krolik.retry import BackoffPolicy
from krolik.service import LoopService
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import RunRef, Task, TaskStore, WorkerInfo
from krolik.worker.decision import Verdict, decide
from krolik.worker.executor import Outcome, OutcomeKind, Run, StopReason, execute
from krolik.worker.lease_keeper import BeatReport, LeaseKeeper
from krolik.worker.peers import Peers
from krolik.worker.slots import Slots

log = get_logger(__name__)
T = TypeVar("T")

REQUEUE_DELAY_SECONDS = 1.0
"""A delivery that could not be handled (the store is away) goes back after this, so a
worker does not spin on it."""
DECLINE_DELAY_SECONDS = 0.5
"""A task whose handler another live worker has is dispatched again after this."""
UNSERVED_RECHECK_SECONDS = 5.0
"""A task whose handler no live worker has is looked at again after this."""


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    declined: int = 0
    """Tasks put back for a worker with their handler (or until one comes)."""
    handed_back: int = 0
    """Tasks of messages that waited too long for a free slot, dispatched again."""


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Once:
    """A delivery settled at most once, whatever path gets there first."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.settled = False

    async def settle(self, action: Callable[[], Awaitable[None]]) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            await action()
        except Exception as exc:  # a closed channel already gave the message back
            log.debug("settle_failed", error=str(exc))

    async def ack(self) -> None:
        await self.settle(self.delivery.ack)

    async def requeue(self) -> None:
        await self.settle(self.delivery.requeue)

    async def dead_letter(self, reason: str) -> None:
        await self.settle(lambda: self.delivery.dead_letter(reason))


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
        self._claiming = 0
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
        self.peers = Peers(store, self.worker_id)
        self._pruner = _RegistryPruner(store, max(settings.worker.lease_seconds, 60.0))
        # Claims and completions of concurrent runs share statements.
        self._claims: MicroBatcher[int, Task | None] = MicroBatcher(self._claim_many)
        self._completions: MicroBatcher[tuple[RunRef, Any], bool] = MicroBatcher(
            store.complete_many
        )

    # -- life cycle ----------------------------------------------------------------
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
        while (self.runs or self._claiming) and (left := deadline - time.monotonic()) > 0:
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

    # -- deliveries ----------------------------------------------------------------
    async def _on_delivery(self, delivery: Delivery) -> None:
        """Take one delivery; whatever is raised, it ends settled."""
        once = _Once(delivery)
        try:
            await self._take(once)
        except Exception as exc:
            self._log.error(
                "delivery_failed",
                error=str(exc),
                error_type=type(exc).__name__,
                exc_info=not isinstance(exc, StoreError),
            )
            await self._requeue_later(once)
        # Cancelled (the consumer's channel closed): that channel gives the message back.

    async def _take(self, once: _Once) -> None:
        """Claim and start every task a message names, then ack it.

        A packed message takes as many free slots as it can use at once and claims
        that group in one statement; it is acked once all its tasks were claimed, put
        back or found not claimable, so a worker that dies first leaves it to be
        redelivered. Tasks that wait longer than ``hold_seconds`` for a slot are handed
        back to the store (dispatched again for any worker) and the message acked, so no
        message stays unacked into RabbitMQ's consumer timeout.
        """
        try:
            messages = TaskMessage.decode_many(once.delivery.body)
        except MalformedMessage as exc:
            self._log.error("message_dead_lettered", reason=str(exc))
            self.stats.dead_lettered += 1
            self.observer.message_dead_lettered("malformed")
            await once.dead_letter(str(exc))
            return
        whole = len(messages) == 1
        unserved = [m for m in messages if m.name not in self.registry.handlers]
        if unserved and not await self._put_back_unserved(once, unserved, whole):
            return
        served = [m for m in messages if m.name in self.registry.handlers]
        hold_until = asyncio.get_running_loop().time() + self.settings.worker.hold_seconds
        done = 0
        while done < len(served):
            wanted = len(served) - done
            if self._slots.ready:  # the common case, without arming a timer
                taken = await self._slots.take(wanted)
            else:
                try:
                    async with asyncio.timeout_at(hold_until):
                        taken = await self._slots.take(wanted)
                except TimeoutError:
                    await self._hand_back(served[done:])
                    break
            if not self._accepting:
                self._slots.give(taken)
                await once.requeue()
                return
            group, done = served[done : done + taken], done + taken
            self._claiming += 1
            # Shielded: closing the consumer channel (stop(), a lost connection) cancels
            # this callback, and a claim already committed must still become a run here,
            # or the task would sit in processing, unheartbeaten, until its lease expired.
            if not await asyncio.shield(self._claim_and_start(once, group, whole)):
                return  # the delivery was settled otherwise
        await once.ack()

    async def _claim_many(self, task_ids: Sequence[int]) -> list[Task | None]:
        return await self.store.claim_many(
            task_ids, self.worker_id, self.settings.worker.lease_seconds, self.handler_defaults
        )

    async def _claim_and_start(
        self, once: _Once, group: Sequence[TaskMessage], whole: bool
    ) -> bool:
        """Claim a group of tasks in the slots already taken and start their runs.

        It counts as claiming until the runs are registered, so ``stop()`` sees every
        task this worker claimed. False when the delivery was settled here.
        """
        try:
            try:
                tasks = await self._claims.submit_many([message.task_id for message in group])
            except Exception as exc:
                self._slots.give(len(group))
                self._log.warning(
                    "claim_failed",
                    task_ids=[m.task_id for m in group],
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
                await self._requeue_later(once)
                return False
            unclaimed = [message for message, task in zip(group, tasks, strict=True) if not task]
            self._slots.give(len(unclaimed))
            for task in tasks:
                if task is not None:
                    self._start(task)
            if unclaimed:
                return await self._not_claimed(once, unclaimed, whole)
            return True
        finally:
            self._claiming -= 1
            self._notify()

    def _start(self, task: Task) -> None:
        self.stats.claimed += 1
        handler = self.registry.handlers[task.name]  # the claim took only names it has
        run = Run(
            task=task,
            ref=RunRef.of(task),
            handler=handler,
            timeout_seconds=task.timeout_seconds or handler.timeout_seconds,
        )
        if self._grace_over:  # stop() already released the others: release this one too
            run.stop(StopReason.SHUTDOWN)
        self.runs[run.ref] = run
        self.keeper.track(run.ref, run.timeout_seconds)
        runner = asyncio.create_task(self._run(run), name=f"krolik-task-{task.id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    async def _not_claimed(self, once: _Once, messages: Sequence[TaskMessage], whole: bool) -> bool:
        """Why tasks were not claimed. One that exists but is not claimable (a duplicate,
        stale, cancelled or not yet due) is dropped; one stored under a name this worker
        has no handler for (the message said otherwise) is put back; a message naming no
        task at all is dead-lettered. False when the delivery was settled here."""
        unserved: list[TaskMessage] = []
        for message in messages:
            task = await self.store.get(message.task_id)
            if task is None:
                reason = f"task {message.task_id} does not exist"
                self._log.error("message_dead_lettered", task_id=message.task_id, reason=reason)
                self.stats.dead_lettered += 1
                self.observer.message_dead_lettered("missing_task")
                if whole:
                    await once.dead_letter(reason)
                    return False
                await self._dead_letter_part(once, message, reason)
            elif task.status is TaskStatus.PENDING and task.name not in self.registry.handlers:
                unserved.append(TaskMessage(task.id, task.name, task.queue))
            else:
                self.stats.skipped += 1
                self._log.info(
                    "delivery_skipped",
                    task_id=message.task_id,
                    redelivered=once.delivery.redelivered,
                    reason="not claimable: duplicate, stale, cancelled or not yet due",
                )
        return not unserved or await self._put_back_unserved(once, unserved, whole)

    async def _put_back_unserved(
        self, once: _Once, messages: Sequence[TaskMessage], whole: bool
    ) -> bool:
        """Tasks this worker has no handler for: left for a worker that has one.

        Dispatched again soon when another live worker serves the handler on its queue,
        else looked at again every few seconds while the task waits (its reason visible
        in the API); it fails only once it has been due ``unserved_fail_after_seconds``
        with no live worker for it. False when the delivery was settled here."""
        fail_after = self.settings.worker.unserved_fail_after_seconds
        for message in messages:
            if await self.peers.serves(message.queue, message.name):
                delay = DECLINE_DELAY_SECONDS
            else:
                task = await self.store.get(message.task_id)
                if task is None or task.status is not TaskStatus.PENDING:
                    continue  # gone or taken meanwhile: nothing to put back
                waited = (datetime.now(UTC) - task.run_at).total_seconds()
                if waited > fail_after:
                    if not await self._fail_unserved(once, task, whole):
                        return False
                    continue
                # Looked at again in a while, or when it would be failed, if sooner.
                delay = min(UNSERVED_RECHECK_SECONDS, max(fail_after - waited, 0.1))
            if await self.store.dispatch_later([message.task_id], delay):
                self.stats.declined += 1
                self._log.info(
                    "task_put_back",
                    task_id=message.task_id,
                    name=message.name,
                    queue=message.queue,
                    reason="no handler of that name in this worker",
                    delay_seconds=delay,
                )
        return True

    async def _fail_unserved(self, once: _Once, task: Task, whole: bool) -> bool:
        reason = (
            f"no live worker has a handler named {task.name!r} for queue {task.queue!r}, "
            f"for {self.settings.worker.unserved_fail_after_seconds:g} s"
        )
        if not await self.store.fail_unrunnable(task.id, reason):
            return True
        self._log.error("message_dead_lettered", task_id=task.id, reason=reason)
        self.stats.dead_lettered += 1
        self.observer.message_dead_lettered("unknown_handler")
        if whole:
            await once.dead_letter(reason)
            return False
        await self._dead_letter_part(once, TaskMessage(task.id, task.name, task.queue), reason)
        return True

    async def _hand_back(self, messages: Sequence[TaskMessage]) -> None:
        """Tasks of a message that waited ``hold_seconds`` for a slot go back to the store
        (dispatched again at once, for whichever worker is free) before it is acked."""
        ids = [message.task_id for message in messages]
        handed = await self.store.dispatch_later(ids, 0)
        self.stats.handed_back += len(handed)
        self._log.info("tasks_handed_back", task_ids=handed, reason="no free slot in time")

    async def _dead_letter_part(self, once: _Once, message: TaskMessage, reason: str) -> None:
        """The store already holds the outcome; the dead letter is a copy for operators."""
        try:
            await once.delivery.dead_letter_part(message, reason)
        except Exception as exc:
            self._log.warning("dead_letter_publish_failed", task_id=message.task_id, error=str(exc))

    async def _requeue_later(self, once: _Once) -> None:
        await asyncio.sleep(REQUEUE_DELAY_SECONDS)  # do not spin on the message
        await once.requeue()

    # -- runs ----------------------------------------------------------------------
    @staticmethod
    def _log_fields(run: Run) -> dict[str, Any]:
        task = run.task
        return {
            "task_id": task.id,
            "attempt": run.ref.attempt,
            "queue": task.queue,
            "name": task.name,
            "request_id": task.request_id,
        }

    async def _run(self, run: Run) -> None:
        task = run.task
        started = time.monotonic()
        slot_held = True
        try:
            self.observer.task_started(task)
            self._log.debug("task_started", **self._log_fields(run))
            outcome = await execute(run)
            if self._recording < self.concurrency:
                # The handler is done: its slot takes the next task while the outcome is
                # written (the write waits for a shared statement). At most ``concurrency``
                # runs are being recorded so, or a slow store would let claims run ahead.
                self._recording += 1
                self._slots.give()
                slot_held = False
            recorded = await self._record(run, outcome)
            self.observer.task_finished(task, recorded, time.monotonic() - started)
        except Exception:
            self._log.exception("task_run_crashed", **self._log_fields(run))
        finally:
            self.keeper.untrack(run.ref)
            self.runs.pop(run.ref, None)
            if slot_held:
                self._slots.give()
            else:
                self._recording -= 1
            self._notify()

    async def _record(self, run: Run, outcome: Outcome) -> str:
        """Write the outcome with the guarded transition it calls for; say what was recorded.

        A success is logged at DEBUG (the store and the metrics record every run);
        everything else that happens to a run is logged at INFO or above.
        """
        ref, task = run.ref, run.task
        decision = decide(outcome, ref.attempt, task.max_attempts or 1, self.backoff)
        if decision.verdict is Verdict.COMPLETE:
            try:
                completed = await self._complete(ref, outcome.result)
            except Exception as exc:
                # The store refused the result itself (not a passing outage): to the
                # task, that is a failure of this run, retried as any other.
                outcome = Outcome(
                    OutcomeKind.FAILED,
                    error=f"the result could not be stored: {type(exc).__name__}: {exc}",
                )
                decision = decide(outcome, ref.attempt, task.max_attempts or 1, self.backoff)
            else:
                if completed:
                    self.stats.succeeded += 1
                    self._log.debug("task_succeeded", **self._log_fields(run))
                    return "succeeded"
        verdict = decision.verdict
        logger = self._log.bind(**self._log_fields(run))
        error = outcome.error or "failed"
        if verdict is Verdict.COMPLETE:
            logger.warning("task_result_discarded", reason="the lease was taken over")
        elif verdict is Verdict.RETRY:
            landed = await self._persist(
                lambda: self.store.retry_later(
                    ref, error, outcome.traceback, decision.delay_seconds
                )
            )
            if landed is TaskStatus.CANCELLED:
                return self._cancelled_meanwhile(logger, error=error)
            if landed is not None:
                self.stats.retried += 1
                logger.warning(
                    "task_retry_scheduled", error=error, delay_seconds=decision.delay_seconds
                )
                return "retried"
        elif verdict is Verdict.FAIL:
            if await self._persist(lambda: self.store.fail(ref, error, outcome.traceback)):
                self.stats.failed += 1
                logger.error("task_failed", error=error)
                return "failed"
        elif verdict is Verdict.CANCEL:
            if await self._persist(lambda: self.store.mark_cancelled(ref)):
                self.stats.cancelled += 1
                logger.info("task_cancelled")
                return "cancelled"
        elif verdict is Verdict.RELEASE:
            landed = await self._persist(lambda: self.store.release(ref))
            if landed is TaskStatus.CANCELLED:
                return self._cancelled_meanwhile(logger)
            if landed is not None:
                self.stats.released += 1
                logger.info("task_released", reason="worker shutdown")
                return "released"
        else:
            logger.warning("task_abandoned", reason="the lease was lost")
        return "abandoned"

    def _cancelled_meanwhile(self, logger: Any, **fields: Any) -> str:
        """The store ended the run as cancelled instead: a cancel came while it ran."""
        self.stats.cancelled += 1
        logger.info("task_cancelled", reason="cancel requested while it ran", **fields)
        return "cancelled"

    async def _complete(self, ref: RunRef, result: Any) -> bool:
        """The common case first: one try, no closure; retried like any write if it fails."""
        try:
            return await self._completions.submit((ref, result))
        except (StoreUnavailable, StoreConflict):
            return bool(await self._persist(lambda: self._completions.submit((ref, result))))

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T | None:
        """Retry a write while the store is away or the statement lost a conflict, as
        long as our lease could last; None when it could not be recorded in that time
        (or failed for another reason: the rescuer then takes the run)."""
        deadline = time.monotonic() + self.settings.worker.lease_seconds
        delay = 0.1
        while True:
            try:
                return await write()
            except (StoreUnavailable, StoreConflict) as exc:
                if time.monotonic() + delay > deadline:
                    self._log.error("outcome_not_recorded", error=str(exc))
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                self._log.error(
                    "outcome_not_recorded",
                    error=str(exc),
                    error_type=type(exc).__name__,
                    exc_info=True,
                )
                return None

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
        if run is None:  # finished meanwhile
            return
        if event is not None and run.stop_reason is None:
            self._log.warning(event, task_id=ref.task_id, attempt=ref.attempt)
        run.stop(reason)
