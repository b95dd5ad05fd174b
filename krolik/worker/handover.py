"""A gated run's slot handed over to the best task its queue holds.

A run of a gated queue keeps its slot while its outcome is written. When it succeeded,
the statement that completes it also claims the best held tasks into that slot (and the
free slots beside it): one commit ends one run and starts the next, so the cap is not
left a slot short for a round trip. Another outcome, or a completion that could not take
that path, is written first, and the held tasks are claimed after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from krolik.store.records import RunRef, Task

CompleteAndClaim = Callable[[RunRef, Any, int], Awaitable[tuple[bool, list[Task]]]]
"""Complete the run and claim up to so many held tasks of its queue, in one commit."""


@dataclass(slots=True)
class Handover:
    queue: str
    extra: int
    """Free slots taken beside the run's own (given back if no task takes them)."""
    complete_and_claim: CompleteAndClaim
    claimed: list[Task] | None = None
    """What the completion claimed; None while no completion went this way."""

    @property
    def offered(self) -> int:
        return 1 + self.extra

    async def complete(self, run: RunRef, result: Any) -> bool:
        """Complete the run and claim into the slots offered; whether it completed."""
        done, self.claimed = await self.complete_and_claim(run, result, self.offered)
        return done
