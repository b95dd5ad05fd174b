"""Task states and every transition between them, in one place.

::

    pending ──claim──▶ processing ──complete──▶ done
       ▲  │                │ │ │
       │  │                │ │ └──fail, attempts left──▶ pending (run_at = now + backoff)
       │  │                │ └────fail, none left────▶ failed
       │  │                ├──lease expired (rescue)─▶ pending, or failed when none left
       │  │                ├──released on shutdown──▶ pending (attempt not counted)
       │  │                └──cancel requested───────▶ cancelled
       │  │                   (also when a run asked to stop ends by retry, release or rescue)
       │  └──cancel──▶ cancelled
       └──retry (API)── failed | cancelled

Every transition is one guarded statement in the store: it names the state it
expects (and, for a running task, the attempt and the worker), so a duplicate
or stale actor changes nothing.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Transition(StrEnum):
    CLAIM = "claim"
    COMPLETE = "complete"
    FAIL = "fail"
    RETRY_LATER = "retry_later"
    RESCUE = "rescue"
    RELEASE = "release"
    CANCEL = "cancel"
    CANCEL_RUNNING = "cancel_running"
    RETRY = "retry"


ALLOWED: dict[Transition, tuple[frozenset[TaskStatus], frozenset[TaskStatus]]] = {
    # transition: (states it may start from, states it may end in)
    Transition.CLAIM: (frozenset({TaskStatus.PENDING}), frozenset({TaskStatus.PROCESSING})),
    Transition.COMPLETE: (frozenset({TaskStatus.PROCESSING}), frozenset({TaskStatus.DONE})),
    Transition.FAIL: (frozenset({TaskStatus.PROCESSING}), frozenset({TaskStatus.FAILED})),
    # a run whose cancel was requested ends cancelled instead of going back to pending
    Transition.RETRY_LATER: (
        frozenset({TaskStatus.PROCESSING}),
        frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED}),
    ),
    Transition.RESCUE: (
        frozenset({TaskStatus.PROCESSING}),
        frozenset({TaskStatus.PENDING, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    ),
    Transition.RELEASE: (
        frozenset({TaskStatus.PROCESSING}),
        frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED}),
    ),
    Transition.CANCEL: (frozenset({TaskStatus.PENDING}), frozenset({TaskStatus.CANCELLED})),
    Transition.CANCEL_RUNNING: (
        frozenset({TaskStatus.PROCESSING}),
        frozenset({TaskStatus.CANCELLED}),
    ),
    Transition.RETRY: (
        frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED}),
        frozenset({TaskStatus.PENDING}),
    ),
}


def can_apply(transition: Transition, current: TaskStatus) -> bool:
    """Whether ``transition`` may start from ``current``."""
    return current in ALLOWED[transition][0]
