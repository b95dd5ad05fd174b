"""Outcomes out: the guarded statement each one calls for, written even through an outage.

``decision.py`` says which transition an outcome asks for; this writes it, retrying while
the store is away or the statement lost a conflict for as long as the run's lease could
last, and says what was recorded. A result the store refuses (not an outage) fails the
run, retried as any failure. Completions of concurrent runs share one statement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from krolik.batching import MicroBatcher
from krolik.errors import StoreConflict, StoreUnavailable
from krolik.log import get_logger
from krolik.retry import BackoffPolicy
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import RunRef
from krolik.worker.decision import Verdict, decide
from krolik.worker.executor import Outcome, OutcomeKind, Run
from krolik.worker.handover import Handover
from krolik.worker.stats import WorkerStats

log = get_logger(__name__)
T = TypeVar("T")


def log_fields(run: Run) -> dict[str, Any]:
    task = run.task
    return {
        "task_id": task.id,
        "attempt": run.ref.attempt,
        "queue": task.queue,
        "name": task.name,
        "request_id": task.request_id,
    }


class Recorder:
    def __init__(
        self,
        store: TaskStore,
        backoff: BackoffPolicy,
        *,
        worker_id: str,
        lease_seconds: float,
        stats: WorkerStats,
    ) -> None:
        self.store = store
        self.backoff = backoff
        self.lease_seconds = lease_seconds
        self.stats = stats
        self._log = log.bind(worker_id=worker_id)
        self._completions: MicroBatcher[tuple[RunRef, Any], bool] = MicroBatcher(
            store.complete_many
        )

    async def record(self, run: Run, outcome: Outcome, handover: Handover | None = None) -> str:
        """Write the outcome with the guarded transition it calls for; say what was recorded.

        A success is logged at DEBUG (the store and the metrics record every run);
        everything else that happens to a run is logged at INFO or above. With
        ``handover`` (a gated run's slot), a success is written by the statement that
        also claims the next held tasks into the slot.
        """
        ref, task = run.ref, run.task
        decision = decide(outcome, ref.attempt, task.max_attempts or 1, self.backoff)
        if decision.verdict is Verdict.COMPLETE:
            try:
                completed = await self._complete(ref, outcome.result, handover)
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
                    self._log.debug("task_succeeded", **log_fields(run))
                    return "succeeded"
        verdict = decision.verdict
        logger = self._log.bind(**log_fields(run))
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
        elif verdict is Verdict.SNOOZE:
            landed = await self._persist(lambda: self.store.snooze(ref, decision.delay_seconds))
            if landed is TaskStatus.CANCELLED:
                return self._cancelled_meanwhile(logger)
            if landed is not None:
                self.stats.snoozed += 1
                logger.info("task_snoozed", delay_seconds=decision.delay_seconds)
                return "snoozed"
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

    async def _complete(self, ref: RunRef, result: Any, handover: Handover | None) -> bool:
        """The common case first: one try, no closure; retried like any write if it fails."""
        if handover is not None:
            try:
                return await handover.complete(ref, result)
            except Exception as exc:
                # One statement: nothing was written. The plain completion follows (and
                # says whether the result itself is at fault); the slot's claim after it.
                self._log.debug("handover_failed", task_id=ref.task_id, error=str(exc))
        try:
            return await self._completions.submit((ref, result))
        except (StoreUnavailable, StoreConflict):
            return bool(await self._persist(lambda: self._completions.submit((ref, result))))

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T | None:
        """Retry a write while the store is away or the statement lost a conflict, as
        long as our lease could last; None when it could not be recorded in that time
        (or failed for another reason: the rescuer then takes the run)."""
        deadline = time.monotonic() + self.lease_seconds
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
