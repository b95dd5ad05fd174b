"""The worker's run slots: at most ``concurrency`` tasks claimed or running at once
(a run whose handler returned may give its slot back before its outcome is written).

Unlike a semaphore, a packed message takes as many slots as are free at once (at
least one), so its tasks are claimed together in one statement. Waiters are served
in order: a waiter woken for a slot has that slot kept for it until it runs, and a
newcomer queues behind the waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Slots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._woken = 0
        """Waiters woken but not yet run: a free slot is kept for each."""

    @property
    def ready(self) -> bool:
        """Whether ``take`` would return at once (a free slot nobody waits for)."""
        return not self._waiters and not self._woken and self.free > 0

    async def take(self, most: int) -> int:
        """Wait for a free slot, then take up to ``most`` of the free ones; say how many."""
        if self._waiters or self._woken or self.free <= 0:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._woken -= 1  # woken, then cancelled: the kept slot goes on
                    self._wake()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            self._woken -= 1
        taken = max(1, min(self.free - self._woken, most))
        self.free -= taken
        self._wake()  # slots this one left may serve the next in line
        return taken

    def give(self, count: int = 1) -> None:
        """Return slots (a run ended, or a claim found its task taken)."""
        if count > 0:
            self.free += count
            self._wake()

    def _wake(self) -> None:
        """Wake waiters, in order, for the free slots not kept for others already woken."""
        while self._waiters and self.free - self._woken > 0:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while waiting
                continue
            waiter.set_result(None)
            self._woken += 1
