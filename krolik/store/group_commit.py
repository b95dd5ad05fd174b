"""Group commit: concurrent enqueues share one transaction.

Under load, the requests that arrive while a commit is in flight are inserted
together by the next one, so a hundred concurrent ``POST /tasks`` cost a few
transactions instead of a hundred. A lone request is committed at once: the
batching never waits for company. Every caller still gets its own task back
only after the transaction holding it committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from krolik.errors import StoreError
from krolik.log import get_logger
from krolik.store.base import Enqueued, NewTask, TaskStore

log = get_logger(__name__)


@dataclass
class _Waiting:
    new: NewTask
    done: asyncio.Future[Enqueued] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitter:
    def __init__(self, store: TaskStore, *, max_batch: int = 500, max_in_flight: int = 4) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[_Waiting] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._active = 0
        """Flushers still looping; counted down the moment one finds the queue empty."""
        self.batches = 0
        """Transactions committed (for tests and benchmarks)."""

    async def enqueue(self, new: NewTask) -> Enqueued:
        waiting = _Waiting(new)
        self._queue.append(waiting)
        if self._active < self.max_in_flight:
            self._active += 1
            flusher = asyncio.create_task(self._flush())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        # Otherwise a running flusher takes it when its current commit is done.
        return await waiting.done

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._commit(batch)
        finally:
            self._active -= 1

    async def _commit(self, batch: list[_Waiting]) -> None:
        try:
            results = await self.store.enqueue([waiting.new for waiting in batch])
        except StoreError as exc:
            for waiting in batch:
                _fail(waiting, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # One bad task must not fail its neighbours: commit them one by one.
            log.warning("group_commit_split", size=len(batch))
            for waiting in batch:
                await self._commit([waiting])
            return
        self.batches += 1
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(result)


def _fail(waiting: _Waiting, exc: BaseException) -> None:
    if not waiting.done.done():
        waiting.done.set_exception(exc)
