"""What a run's outcome asks the store to record: a pure function, no I/O.

The worker writes the decision with the one guarded statement it names; the store
may still refuse it (the run lost its lease) or end the task otherwise (a cancel
came while it ran). Tests reach every branch without a database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from krolik.retry import BackoffPolicy
from krolik.worker.executor import Outcome, OutcomeKind, StopReason


class Verdict(StrEnum):
    COMPLETE = "complete"
    RETRY = "retry"
    """Back to pending after ``delay_seconds``; the attempt counts."""
    FAIL = "fail"
    """No attempts left: failed for good (the dead-letter state)."""
    CANCEL = "cancel"
    RELEASE = "release"
    """Back to pending at once, the attempt not counted (the worker is shutting down)."""
    SNOOZE = "snooze"
    """Back to pending after ``delay_seconds``, the attempt not counted (the handler asked)."""
    ABANDON = "abandon"
    """Nothing to write: the run lost its lease, another run owns the task now."""


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay_seconds: float = 0.0


def decide(
    outcome: Outcome,
    attempt: int,
    max_attempts: int,
    backoff: BackoffPolicy,
    rng: random.Random | None = None,
) -> Decision:
    """The transition an outcome calls for, at ``attempt`` of ``max_attempts``."""
    if outcome.kind is OutcomeKind.SUCCEEDED:
        return Decision(Verdict.COMPLETE)
    if outcome.kind is OutcomeKind.SNOOZED:
        return Decision(Verdict.SNOOZE, outcome.snooze_seconds)
    if outcome.kind is OutcomeKind.FAILED:
        if attempt < max_attempts and not outcome.permanent:
            return Decision(Verdict.RETRY, backoff.delay(attempt, rng))
        return Decision(Verdict.FAIL)
    if outcome.stop_reason is StopReason.CANCEL_REQUESTED:
        return Decision(Verdict.CANCEL)
    if outcome.stop_reason is StopReason.SHUTDOWN:
        return Decision(Verdict.RELEASE)
    return Decision(Verdict.ABANDON)
