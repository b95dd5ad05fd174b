"""``Snooze``: how a handler says "not yet, run me again later" without failing.

Waiting on an outside system (a report still being built, a partner's batch window) is
not a failure: a snoozed task goes back to pending for the time asked, and the attempt
it was in does not count against ``max_attempts``. Raise it, or return it.
"""

from __future__ import annotations

import math

MAX_SNOOZE_SECONDS = 366 * 86400.0


class Snooze(Exception):
    """Run this task again ``seconds`` from now; this attempt is not counted."""

    def __init__(self, seconds: float) -> None:
        seconds = float(seconds)
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SNOOZE_SECONDS:
            raise ValueError(
                f"a snooze lasts from 0 to {MAX_SNOOZE_SECONDS:g} seconds, not {seconds!r}"
            )
        super().__init__(seconds)
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"Snooze({self.seconds:g})"
