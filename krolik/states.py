"""Task states and every transition between them, in one place.

::

    pending ──claim──▶ processing ──complete──▶ done
       ▲  │ ▲              │ │ │
       │  │ └ dispatch     │ │ └──fail, attempts left──▶ pending (run_at = now + backoff)
       │  │   again        │ └────fail, none left────▶ failed
       │  │                ├──lease expired (rescue)─▶ pending, or failed when none left
       │  │                ├──released on shutdown──▶ pending (attempt not counted)
       │  │                └──cancel requested, then
       │  │                   mark_cancelled─────────▶ cancelled
       │  │                   (also when a run asked to stop ends by retry, release or rescue)
       │  │                ├──snoozed by its handler─▶ pending (run_at = now + snooze,
       │  │                │                           attempt not counted)
       │  ├──cancel──▶ cancelled
       │  ├──not started by its expires_at──▶ expired
       │  └──no worker has its handler, long enough──▶ failed
       └──retry (API)── failed | cancelled | expired

Every transition is one guarded statement in the store: it names the states it
expects (and, for a running task, the run's fencing token), so a duplicate or stale
actor changes nothing. ``ALLOWED`` is the table of them; ``TRANSITIONS`` names the
store method behind each, and ``tests/contract/test_transitions.py`` runs every one
from every state, on both stores, against this table.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """Not started by its ``expires_at``: it never ran and never will."""

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


class AttemptOutcome(StrEnum):
    """How a run ended, as its attempt record keeps it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The last attempt failed: the task failed."""
    RETRIED = "retried"
    """It failed with attempts left: the task waits for its backoff."""
    CANCELLED = "cancelled"
    RELEASED = "released"
    """The worker shut down and gave the task back (the attempt does not count)."""
    SNOOZED = "snoozed"
    """The handler asked to run again later (``Snooze``); the attempt does not count."""
    LOST = "lost"
    """The lease ran out (the worker died or stalled); the rescuer took the task."""


class DeliveryState(StrEnum):
    """Where one webhook delivery (one ended task, one URL) stands."""

    PENDING = "pending"
    """Not answered with a 2xx yet; tried again until its time runs out."""
    DELIVERED = "delivered"
    FAILED = "failed"
    """Given up: its time ran out, or its URL is not allowed."""


class Transition(StrEnum):
    CLAIM = "claim"
    COMPLETE = "complete"
    FAIL = "fail"
    RETRY_LATER = "retry_later"
    RELEASE = "release"
    SNOOZE = "snooze"
    MARK_CANCELLED = "mark_cancelled"
    RESCUE = "rescue"
    CANCEL = "cancel"
    """The API's cancel: a pending task is cancelled, a running one asked to stop."""
    RETRY = "retry"
    FAIL_UNRUNNABLE = "fail_unrunnable"
    EXPIRE = "expire"
    """A pending task not started by its ``expires_at`` ends expired."""
    DISPATCH_AGAIN = "dispatch_again"
    """A pending task gets another outbox row (put back by a worker, or its message lost)."""


PENDING, PROCESSING = TaskStatus.PENDING, TaskStatus.PROCESSING
DONE, FAILED, CANCELLED = TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED
EXPIRED = TaskStatus.EXPIRED

ALLOWED: dict[Transition, tuple[frozenset[TaskStatus], frozenset[TaskStatus]]] = {
    # transition: (states it may start from, states it may end in)
    Transition.CLAIM: (frozenset({PENDING}), frozenset({PROCESSING})),
    Transition.COMPLETE: (frozenset({PROCESSING}), frozenset({DONE})),
    Transition.FAIL: (frozenset({PROCESSING}), frozenset({FAILED})),
    # a run whose cancel was requested ends cancelled instead of going back to pending
    Transition.RETRY_LATER: (frozenset({PROCESSING}), frozenset({PENDING, CANCELLED})),
    Transition.RELEASE: (frozenset({PROCESSING}), frozenset({PENDING, CANCELLED})),
    Transition.SNOOZE: (frozenset({PROCESSING}), frozenset({PENDING, CANCELLED})),
    Transition.MARK_CANCELLED: (frozenset({PROCESSING}), frozenset({CANCELLED})),
    Transition.RESCUE: (frozenset({PROCESSING}), frozenset({PENDING, FAILED, CANCELLED})),
    # a running task stays processing, asked to stop (cancel_requested)
    Transition.CANCEL: (frozenset({PENDING, PROCESSING}), frozenset({CANCELLED, PROCESSING})),
    Transition.RETRY: (frozenset({FAILED, CANCELLED, EXPIRED}), frozenset({PENDING})),
    Transition.FAIL_UNRUNNABLE: (frozenset({PENDING}), frozenset({FAILED})),
    Transition.EXPIRE: (frozenset({PENDING}), frozenset({EXPIRED})),
    Transition.DISPATCH_AGAIN: (frozenset({PENDING}), frozenset({PENDING})),
}

TRANSITIONS: dict[Transition, tuple[str, ...]] = {
    Transition.CLAIM: ("claim_many", "claim_held"),
    # complete_and_claim_held also claims its queue's held tasks, as claim_held does
    Transition.COMPLETE: ("complete_many", "complete_and_claim_held"),
    Transition.FAIL: ("fail",),
    Transition.RETRY_LATER: ("retry_later",),
    Transition.RELEASE: ("release",),
    Transition.SNOOZE: ("snooze",),
    Transition.MARK_CANCELLED: ("mark_cancelled",),
    Transition.RESCUE: ("rescue_expired",),
    Transition.CANCEL: ("cancel",),
    Transition.RETRY: ("retry",),
    Transition.FAIL_UNRUNNABLE: ("fail_unrunnable",),
    Transition.EXPIRE: ("expire_overdue",),
    Transition.DISPATCH_AGAIN: ("dispatch_later", "redispatch_stale", "wake"),
}
"""The store methods (``TaskStore``) whose guarded statements make each transition."""


def can_apply(transition: Transition, current: TaskStatus) -> bool:
    """Whether ``transition`` may start from ``current``."""
    return current in ALLOWED[transition][0]
