"""Retry timing: exponential backoff with jitter (pure, no I/O)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_seconds: float = 1.0
    max_seconds: float = 300.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next try after ``attempt`` (1-based) failed.

        The delay is a random share (half to all) of an exponential cap: tasks that
        failed together spread out instead of coming back as one wave, and no
        retry comes back at once.
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        cap = min(self.max_seconds, self.base_seconds * (2 ** min(attempt - 1, 62)))
        draw = (rng or random).uniform(0.5, 1.0)
        return float(cap * draw)
