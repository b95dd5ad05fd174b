"""Background loops as small services with start/stop and a signal tests can wait on."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

from krolik.log import get_logger

log = get_logger(__name__)


class LoopService(ABC):
    """Runs ``tick`` every ``interval`` seconds until stopped.

    ``tick`` returns True when it did a full batch and should run again at once.
    ``wake()`` cuts a wait short; ``ticked`` is set after each tick so tests can
    wait for work to happen instead of sleeping.
    """

    name = "loop"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ticked = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @abstractmethod
    async def tick(self) -> bool: ...

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"krolik-{self.name}")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        self._wake.set()

    async def wait_tick(self, timeout: float = 10.0) -> None:
        """Wait for the next completed tick (test signal)."""
        self.ticked.clear()
        self.wake()
        await asyncio.wait_for(self.ticked.wait(), timeout)

    async def _run(self) -> None:
        while not self._stopping:
            again = False
            try:
                again = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    f"{self.name}_tick_failed", error=str(exc), error_type=type(exc).__name__
                )
            self.ticked.set()
            if again or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._task = None
