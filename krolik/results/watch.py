"""The API process's watch over tasks: one listener of change notices wakes every local
waiter and follower of a task, after one shared read of it.

A request waiting for a task holds no database connection: it registers a ``Watcher``
and sleeps. Each notice naming watched tasks (or tasks a change stream's filter matches)
makes them dirty; one reader re-reads the dirty tasks, many per statement, and offers
each to its watchers. What a lost notice would miss, the periodic re-read of everything
watched (and the one after a reconnect to the broker) finds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from krolik.broker.base import Broker, Subscription
from krolik.errors import BrokerUnavailable, StoreError
from krolik.log import get_logger
from krolik.results.notices import decode_changes
from krolik.settings import ResultsSettings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import Task

log = get_logger(__name__)

READ_CHUNK = 1000
"""Tasks re-read per statement."""
STREAM_BACKLOG = 1000
"""Changes a change stream holds for a slow client; the oldest go first."""
RECONNECT_SECONDS = 2.0


class Version(NamedTuple):
    """What tells two reads of a task apart."""

    run_token: int
    updated_at: datetime
    status: TaskStatus
    progress: object

    @classmethod
    def of(cls, task: Task) -> Version:
        progress = task.progress
        written = (progress.get("seq"), progress.get("at")) if isinstance(progress, dict) else None
        return cls(task.run_token, task.updated_at, task.status, written)


class Watcher:
    """One request's interest in one task: the latest read of it, and a wake-up."""

    __slots__ = ("_changed", "latest", "task_id")

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        self.latest: Task | None = None
        self._changed = asyncio.Event()

    def offer(self, task: Task) -> None:
        self.latest = task
        self._changed.set()

    async def next(self, timeout: float) -> Task | None:
        """The task's next read, or None if none came within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return None
        self._changed.clear()
        return self.latest


@dataclass(eq=False)  # each stream is its own, kept in a set
class ChangeStream:
    """A client following the changes of many tasks (``GET /events``), by queue and name."""

    queue: str | None = None
    name: str | None = None
    changes: asyncio.Queue[Task] = field(
        default_factory=lambda: asyncio.Queue(maxsize=STREAM_BACKLOG)
    )
    dropped: int = 0

    def matches(self, queue: str, name: str) -> bool:
        return (self.queue is None or self.queue == queue) and (
            self.name is None or self.name == name
        )

    def offer(self, task: Task) -> None:
        if self.changes.full():
            self.changes.get_nowait()
            self.dropped += 1
        self.changes.put_nowait(task)


class TaskWatch:
    def __init__(self, store: TaskStore, broker: Broker, settings: ResultsSettings) -> None:
        self.store = store
        self.broker = broker
        self.settings = settings
        self._watchers: dict[int, set[Watcher]] = {}
        self._streams: set[ChangeStream] = set()
        self._dirty: set[int] = set()
        self._seen: dict[int, Version] = {}
        """Each watched task's version as last offered: a re-read that finds it unchanged
        (the periodic one, mostly) wakes nobody."""
        self._woken = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Subscription | None = None
        self.listening = asyncio.Event()
        """Set while notices arrive (tests wait on it; a wait works without, slower)."""
        self.reads = 0
        """Statements the watch ran (each re-reads up to ``READ_CHUNK`` tasks)."""

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._listen(), name="krolik-watch-listen"),
            asyncio.create_task(self._listen_store(), name="krolik-watch-listen-store"),
            asyncio.create_task(self._read_loop(), name="krolik-watch-read"),
            asyncio.create_task(self._recheck_loop(), name="krolik-watch-recheck"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.cancel()
            self._listener = None
        self.listening.clear()

    async def _listen(self) -> None:
        """Subscribe to the notices, again and again until the broker lets us."""
        while self._listener is None:
            try:
                self._listener = await self.broker.listen_notices(self.notice, self.resumed)
            except BrokerUnavailable as exc:
                log.warning("watch_not_listening", error=str(exc))
                await asyncio.sleep(RECONNECT_SECONDS)
        self.listening.set()
        self.resumed()  # what changed before we listened

    async def _listen_store(self) -> None:
        """The store's word of ended tasks too, where it has one (PostgreSQL's NOTIFY at
        commit: one hop sooner than the worker's notice through the broker). Connected
        again after a loss, with everything watched read again."""
        lost = asyncio.Event()
        while True:
            lost.clear()
            try:
                close = await self.store.listen_ended(self.ended, lost.set)
            except StoreError as exc:
                log.warning("watch_not_listening_to_store", error=str(exc))
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            if close is None:
                return  # the store has no such word: the broker's notices serve alone
            try:
                self.resumed()  # what ended before we listened, or while we were away
                await lost.wait()
            finally:
                await close()

    def ended(self, task_id: int, task: Task | None = None) -> None:
        """The store's word that the task ended, with its final record when the word held
        it: its waiters are answered at once, with no read."""
        if task_id not in self._watchers:
            return
        if task is None:
            self._dirty.add(task_id)
            self._woken.set()
            return
        seen = self._seen.get(task_id)
        if seen is not None and (task.run_token, task.updated_at) < seen[:2]:
            return  # a read came first and found the task changed again since
        self._deliver([task])

    # -- registrations -----------------------------------------------------------------
    @contextlib.contextmanager
    def watching(self, task_id: int) -> Iterator[Watcher]:
        watcher = Watcher(task_id)
        self._watchers.setdefault(task_id, set()).add(watcher)
        try:
            yield watcher
        finally:
            watchers = self._watchers.get(task_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[task_id]
                    self._seen.pop(task_id, None)

    @contextlib.contextmanager
    def streaming(self, queue: str | None, name: str | None) -> Iterator[ChangeStream]:
        stream = ChangeStream(queue, name)
        self._streams.add(stream)
        try:
            yield stream
        finally:
            self._streams.discard(stream)

    @property
    def watched(self) -> int:
        """Tasks someone waits for or follows now."""
        return len(self._watchers)

    # -- waiting -----------------------------------------------------------------------
    async def wait_final(self, task_id: int, seconds: float) -> Task | None:
        """The task once it is final, or as it is when ``seconds`` have passed; None if
        there is no such task. Registered before the first read, so a change between
        that read and the wait is not missed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with self.watching(task_id) as watcher:
            task = await self.store.get(task_id)
            if task is None or task.status.is_final:
                return task
            while (remaining := deadline - loop.time()) > 0:
                seen = await watcher.next(remaining)
                if seen is not None and seen.status.is_final:
                    return seen
        return await self.store.get(task_id)

    # -- notices -----------------------------------------------------------------------
    def notice(self, body: bytes) -> None:
        changes = decode_changes(body)
        streams = self._streams
        for change in changes:
            if change.task_id in self._watchers or any(
                stream.matches(change.queue, change.name) for stream in streams
            ):
                self._dirty.add(change.task_id)
        if self._dirty:
            self._woken.set()

    def resumed(self) -> None:
        """Notices may have been missed: read everything watched again."""
        self._dirty.update(self._watchers)
        if self._dirty:
            self._woken.set()

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.recheck_seconds)
            self.resumed()

    async def _read_loop(self) -> None:
        while True:
            await self._woken.wait()
            self._woken.clear()
            dirty, self._dirty = list(self._dirty), set()
            for start in range(0, len(dirty), READ_CHUNK):
                chunk = dirty[start : start + READ_CHUNK]
                try:
                    tasks = await self.store.get_many(chunk)
                except Exception as exc:  # the loop must outlive any failure
                    if isinstance(exc, StoreError):
                        log.warning("watch_read_failed", error=str(exc), tasks=len(chunk))
                    else:
                        log.exception("watch_read_failed", tasks=len(chunk))
                    self._dirty.update(chunk)
                    await asyncio.sleep(RECONNECT_SECONDS)
                    self._woken.set()
                    break
                self.reads += 1
                self._deliver(tasks)

    def _deliver(self, tasks: list[Task]) -> None:
        for task in tasks:
            watchers = self._watchers.get(task.id)
            if watchers:
                version = Version.of(task)
                if self._seen.get(task.id) != version:
                    self._seen[task.id] = version
                    for watcher in tuple(watchers):
                        watcher.offer(task)
            for stream in self._streams:
                if stream.matches(task.queue, task.name):
                    stream.offer(task)
