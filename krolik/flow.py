"""Flow control: a queue's gates (pause, caps, a limit per key, a rate limit) as data.

A queue with a row in ``krolik_queues`` that is paused or has a limit is *gated*: its
tasks are claimed through the gates, in one transaction that locks the queue's row
(so two workers never both take the last slot), and the claim picks the best tasks
waiting (highest ``priority``, then the oldest), not merely the one a message named. A
task refused by a gate is *held* in the store with the reason, without a message, and
is woken (dispatched again) when a slot frees: a run of the queue ends, the queue is
resumed or its limits change, or its rate window slides (the waker). Nothing is ever
lost to a limit, and nothing polls the held tasks one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from krolik.store.base import TaskStore


class Hold(StrEnum):
    """Why a pending task of a gated queue waits."""

    PAUSED = "paused"
    MAX_RUNNING = "max_running"
    KEY_LIMIT = "key_limit"
    RATE_LIMIT = "rate_limit"

    def explain(self, queue: str, key: str | None) -> str:
        """The reason in words a user can act on (``GET /tasks/{id}``)."""
        return {
            Hold.PAUSED: f"queue {queue!r} is paused",
            Hold.MAX_RUNNING: f"queue {queue!r} runs its max_running tasks",
            Hold.KEY_LIMIT: f"queue {queue!r} runs its max_running_per_key tasks of key {key!r}",
            Hold.RATE_LIMIT: f"queue {queue!r} reached its rate limit",
        }[self]


MOST = 1_000_000
"""The largest limit (a cap, a key's cap, a rate's amount) a queue may have."""
SLICES_PER_WINDOW = 60
"""A slice that overlaps the window counts whole: the limit is never passed, and at most
a sixtieth of the window's starts waits a slice longer than an exact count would make it."""


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``amount`` starts in any window of ``window_seconds``."""

    amount: int
    window_seconds: float
    text: str

    @property
    def slice_seconds(self) -> float:
        """Starts are counted per slice of the window: a sixtieth of it."""
        return self.window_seconds / SLICES_PER_WINDOW

    @property
    def counted_seconds(self) -> float:
        """How far back a slice still overlaps the window."""
        return self.window_seconds + self.slice_seconds

    @classmethod
    def parse(cls, text: str) -> Rate:
        """The ``limits`` notation ("60/minute", "10 per 2 seconds"); ValueError if not.
        (Imported here: a worker whose queues have no rate limit never loads it.)"""
        import limits

        try:
            item = limits.parse(text)
        except ValueError as exc:
            raise ValueError(
                f"{text!r} is not a rate limit: write it as '60/minute' or '10 per 2 seconds'"
            ) from exc
        if item.amount < 1:
            raise ValueError(f"rate limit {text!r} allows no start at all: pause the queue")
        if item.amount > MOST:
            raise ValueError(f"rate limit {text!r}: a window allows at most {MOST:,} starts")
        return cls(item.amount, float(item.get_expiry()), text.strip())


@dataclass(frozen=True, slots=True)
class QueueGates:
    """One queue's pause and limits (None: no limit)."""

    name: str
    paused: bool = False
    max_running: int | None = None
    max_running_per_key: int | None = None
    rate_limit: str | None = None
    default_priority: int | None = None
    """The priority of its new tasks that give none (and whose handler names none)."""
    updated_at: datetime | None = None

    @property
    def gated(self) -> bool:
        """Whether claims of this queue go through the gates."""
        return (
            self.paused
            or self.max_running is not None
            or self.max_running_per_key is not None
            or self.rate_limit is not None
        )

    @property
    def rate(self) -> Rate | None:
        return None if self.rate_limit is None else Rate.parse(self.rate_limit)


LIMIT_FIELDS = ("max_running", "max_running_per_key", "rate_limit", "default_priority")
"""The limits and the default priority (what the settings may give a queue)."""
GATE_FIELDS = ("paused", *LIMIT_FIELDS)
"""What ``PATCH /queues/{name}`` may change."""
PRIORITY_RANGE = (-1000, 1000)
"""The lowest and the highest priority a task (or a default) may have."""


async def change_gates(store: TaskStore, queue: str, changes: Mapping[str, Any]) -> QueueGates:
    """Set some of a queue's gates, then wake the held tasks the change lets start (a
    resume, a higher cap, a lifted limit): limits are data, and apply at once."""
    if changes.get("rate_limit") is not None:
        Rate.parse(changes["rate_limit"])  # refused here, not at the next claim
    gates = await store.set_gates(queue, changes)
    await store.wake(queue)
    return gates
