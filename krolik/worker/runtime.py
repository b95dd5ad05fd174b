"""The worker: deliveries in, claims in the store, handlers run, outcomes recorded.

Order of events for one delivery: parse -> wait for a free slot -> claim in the
store (guarded: pending -> processing) -> ack the message -> run the handler while
the heartbeat extends the lease -> give the slot back (while fewer than
``concurrency`` runs are recording) -> record the outcome (guarded by attempt and
worker). Acking right after the claim means a task may run far longer than
RabbitMQ's consumer timeout; the lease, not the unacked message, protects it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from krolik.batching import MicroBatcher
from krolik.broker.base import Broker, Delivery, MalformedMessage, Subscription, TaskMessage
from krolik.errors import StoreError, StoreUnavailable
from krolik.events import Observer
from krolik.log import get_logger
from krolik.registry import Handler, Registry
from krolik.retry import BackoffPolicy
from krolik.service import LoopService
from krolik.settings import Settings
from krolik.states import TaskStatus
from krolik.store.base import Claim, RunRef, Task, TaskStore
from krolik.worker.executor import Outcome, OutcomeKind, Run, StopReason, execute
from krolik.worker.slots import Slots

log = get_logger(__name__)
T = TypeVar("T")


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


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Heartbeat(LoopService):
    name = "heartbeat"

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker.settings.worker.heartbeat_seconds)
        self.worker = worker

    async def tick(self) -> bool:
        await self.worker.beat()
        return False


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
        self.stats = WorkerStats()
        self.runs: dict[int, Run] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._slots = Slots(self.concurrency)
        self._accepting = False
        self._claiming = 0
        self._recording = 0
        """Runs whose handler returned and whose outcome is being written, slot given back."""
        self._grace_over = False
        self._changed = asyncio.Event()
        self._subscription: Subscription | None = None
        self._heartbeat = _Heartbeat(self)
        self._last_beat = time.monotonic()
        self._log = log.bind(worker_id=self.worker_id)
        # Claims and completions of concurrent runs share statements.
        self._claims: MicroBatcher[Claim, Task | None] = MicroBatcher(self._claim_many)
        self._completions: MicroBatcher[tuple[RunRef, Any], bool] = MicroBatcher(
            store.complete_many
        )

    # -- life cycle ----------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """Started and not yet told to stop."""
        return self._accepting

    async def start(self) -> None:
        await self.broker.connect()
        self._accepting = True
        self._grace_over = False
        prefetch = self.prefetch_messages()
        self._subscription = await self.broker.consume(self.queues, prefetch, self._on_delivery)
        self._last_beat = time.monotonic()
        self._heartbeat.start()
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
        """Stop taking tasks, let running ones finish within the grace, release the rest."""
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
        await self._wait_idle(time.monotonic() + 10)
        await self._heartbeat.stop()
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

    # -- deliveries ----------------------------------------------------------------
    async def _on_delivery(self, delivery: Delivery) -> None:
        """Claim and start every task a message names, then ack it.

        A packed message takes as many free slots as it can use at once and claims
        that group in one statement; it is acked once all its tasks were claimed or
        found not claimable, so a worker that dies first leaves it to be redelivered.
        """
        try:
            messages = TaskMessage.decode_many(delivery.body)
        except MalformedMessage as exc:
            self._log.error("message_dead_lettered", reason=str(exc))
            self.stats.dead_lettered += 1
            self.observer.message_dead_lettered("malformed")
            await delivery.dead_letter(str(exc))
            return
        whole = len(messages) == 1
        runnable: list[tuple[TaskMessage, Handler]] = []
        for message in messages:
            handler = self.registry.handlers.get(message.name)
            if handler is not None:
                runnable.append((message, handler))
                continue
            reason = f"no handler is registered under the name {message.name!r}"
            try:
                failed_now = await self.store.fail_unrunnable(message.task_id, reason)
            except StoreError:
                await self._requeue_later(delivery)
                return
            if not whole and not failed_now:
                # Failed on an earlier delivery of this packed message (requeued since,
                # e.g. by a stopping worker): its dead letter was already sent.
                continue
            self._log.error("message_dead_lettered", task_id=message.task_id, reason=reason)
            self.stats.dead_lettered += 1
            self.observer.message_dead_lettered("unknown_handler")
            if whole:
                await delivery.dead_letter(reason)
                return
            await self._dead_letter_part(delivery, message, reason)
        done = 0
        while done < len(runnable):
            taken = await self._slots.take(len(runnable) - done)
            if not self._accepting:
                self._slots.give(taken)
                await self._settle(delivery.requeue())
                return
            group, done = runnable[done : done + taken], done + taken
            self._claiming += 1
            # Shielded: closing the consumer channel (stop(), a lost connection) cancels
            # this callback, and a claim already committed must still become a run here,
            # or the task would sit in processing, unheartbeaten, until its lease expired.
            if not await asyncio.shield(self._claim_and_start(delivery, group, whole)):
                return  # the delivery was settled otherwise
        await self._settle(delivery.ack())

    async def _claim_many(self, claims: Sequence[Claim]) -> list[Task | None]:
        return await self.store.claim_many(
            claims, self.worker_id, self.settings.worker.lease_seconds
        )

    async def _claim_and_start(
        self,
        delivery: Delivery,
        group: Sequence[tuple[TaskMessage, Handler]],
        whole: bool,
    ) -> bool:
        """Claim a group of tasks in the slots already taken and start their runs.

        It counts as claiming until the runs are registered, so ``stop()`` sees every
        task this worker claimed. False when the delivery was settled here.
        """
        try:
            default_max = self.settings.retry.default_max_attempts
            try:
                tasks = await self._claims.submit_many(
                    [
                        Claim(message.task_id, handler.max_attempts or default_max)
                        for message, handler in group
                    ]
                )
            except StoreError as exc:
                self._slots.give(len(group))
                self._log.warning(
                    "claim_failed", task_ids=[m.task_id for m, _ in group], error=str(exc)
                )
                await self._requeue_later(delivery)
                return False
            pairs = list(zip(group, tasks, strict=True))
            unclaimed = [message for (message, _), task in pairs if task is None]
            self._slots.give(len(unclaimed))
            for (_, handler), task in pairs:
                if task is not None:
                    self._start(task, handler)
            for message in unclaimed:
                if not await self._not_claimed(delivery, message, whole):
                    return False
            return True
        finally:
            self._claiming -= 1
            self._notify()

    def _start(self, task: Task, handler: Handler) -> None:
        self.stats.claimed += 1
        ref = RunRef(task.id, task.attempts, self.worker_id)
        run = Run(
            task=task,
            ref=ref,
            handler=handler,
            timeout_seconds=task.timeout_seconds or handler.timeout_seconds,
        )
        if self._grace_over:  # stop() already released the others: release this one too
            run.stop(StopReason.SHUTDOWN)
        self.runs[task.id] = run
        runner = asyncio.create_task(self._run(run), name=f"krolik-task-{task.id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    async def _not_claimed(self, delivery: Delivery, message: TaskMessage, whole: bool) -> bool:
        """A task that exists but is not claimable (a duplicate, stale, cancelled or not
        yet due) is dropped; a message naming no task at all is dead-lettered.
        False when the delivery was settled here."""
        try:
            exists = await self.store.get(message.task_id) is not None
        except StoreError as exc:
            self._log.warning("claim_failed", task_id=message.task_id, error=str(exc))
            await self._requeue_later(delivery)
            return False
        if not exists:
            reason = f"task {message.task_id} does not exist"
            self._log.error("message_dead_lettered", task_id=message.task_id, reason=reason)
            self.stats.dead_lettered += 1
            self.observer.message_dead_lettered("missing_task")
            if whole:
                await self._settle(delivery.dead_letter(reason))
                return False
            await self._dead_letter_part(delivery, message, reason)
            return True
        self.stats.skipped += 1
        self._log.info(
            "delivery_skipped",
            task_id=message.task_id,
            redelivered=delivery.redelivered,
            reason="not claimable: duplicate, stale, cancelled or not yet due",
        )
        return True

    async def _dead_letter_part(
        self, delivery: Delivery, message: TaskMessage, reason: str
    ) -> None:
        """The store already holds the outcome; the dead letter is a copy for operators."""
        try:
            await delivery.dead_letter_part(message, reason)
        except Exception as exc:
            self._log.warning("dead_letter_publish_failed", task_id=message.task_id, error=str(exc))

    async def _settle(self, action: Awaitable[None]) -> None:
        """Ack or requeue; a closed channel already gave the message back."""
        try:
            await action
        except Exception as exc:
            self._log.debug("settle_failed", error=str(exc))

    async def _requeue_later(self, delivery: Delivery) -> None:
        await asyncio.sleep(1.0)  # the store is down: do not spin on the message
        await self._settle(delivery.requeue())

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
            self.runs.pop(task.id, None)
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
        succeeded = outcome.kind is OutcomeKind.SUCCEEDED
        if succeeded and await self._complete(ref, outcome.result):
            self.stats.succeeded += 1
            self._log.debug("task_succeeded", **self._log_fields(run))
            return "succeeded"
        logger = self._log.bind(**self._log_fields(run))
        if succeeded:
            logger.warning("task_result_discarded", reason="the lease was taken over")
            return "abandoned"
        if outcome.kind is OutcomeKind.FAILED:
            error = outcome.error or "failed"
            if ref.attempt < (task.max_attempts or 1):
                delay = self.backoff.delay(ref.attempt)
                landed = await self._persist(
                    lambda: self.store.retry_later(ref, error, outcome.traceback, delay)
                )
                if landed is TaskStatus.CANCELLED:
                    return self._cancelled_meanwhile(logger, error=error)
                if landed is not None:
                    self.stats.retried += 1
                    logger.warning("task_retry_scheduled", error=error, delay_seconds=delay)
                    return "retried"
            elif await self._persist(lambda: self.store.fail(ref, error, outcome.traceback)):
                self.stats.failed += 1
                logger.error("task_failed", error=error)
                return "failed"
            return "abandoned"
        if outcome.stop_reason is StopReason.CANCEL_REQUESTED:
            if await self._persist(lambda: self.store.mark_cancelled(ref)):
                self.stats.cancelled += 1
                logger.info("task_cancelled")
                return "cancelled"
        elif outcome.stop_reason is StopReason.SHUTDOWN:
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
        except StoreUnavailable:
            return bool(await self._persist(lambda: self._completions.submit((ref, result))))

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T | None:
        """Retry a write while the store is unreachable, as long as our lease could last;
        None when it could not be recorded in that time."""
        deadline = time.monotonic() + self.settings.worker.lease_seconds
        delay = 0.1
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    self._log.error("outcome_not_recorded", error=str(exc))
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- heartbeat -----------------------------------------------------------------
    async def beat(self) -> None:
        """Extend every running lease; stop runs whose lease was lost or that were cancelled."""
        runs = list(self.runs.values())
        now = time.monotonic()
        if not runs:
            self._last_beat = now
            return
        try:
            answer = await self.store.heartbeat(
                [run.ref for run in runs], self.settings.worker.lease_seconds
            )
        except StoreError as exc:
            self._log.warning("heartbeat_failed", error=str(exc))
            if now - self._last_beat > self.settings.worker.lease_seconds:
                for run in runs:
                    run.stop(StopReason.LEASE_LOST)
            return
        self._last_beat = now
        for run in runs:
            if run.ref.task_id not in answer:
                if self.runs.get(run.ref.task_id) is run:  # not just finished
                    self._log.warning("lease_lost", task_id=run.ref.task_id)
                    run.stop(StopReason.LEASE_LOST)
            elif answer[run.ref.task_id]:
                run.stop(StopReason.CANCEL_REQUESTED)
