"""Status reads from a streaming replica, while it keeps up; from the primary otherwise.

The API's list and status reads (``GET /tasks``, ``GET /tasks/{id}``, ``GET /queues``
and the store gauges behind ``/metrics``) may go to a read replica (``APP__DB__READ_URL``).
Writes, claims and everything a worker does stay on the primary.

A client must not see its own writes go backwards, so a read uses the replica only while
its replay lag is at most ``read_max_lag_seconds``; a task the replica does not have
(yet) is read from the primary before the API answers 404; a replica that cannot be
reached, or is not streaming, is left alone until the next check. The lag is measured
at most every ``read_check_seconds``, by the read that finds the last measure too old.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import text

from krolik.errors import StoreError
from krolik.log import get_logger
from krolik.store.base import TaskStore
from krolik.store.records import OutboxStats, QueueStats, Task, TaskFilter

log = get_logger(__name__)

LAG_SQL = text(
    """
    SELECT pg_is_in_recovery() AS standby,
           (SELECT status FROM pg_stat_wal_receiver) AS receiver,
           CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
           END AS lag
    """
)
"""Replay lag in seconds: 0 once everything received is replayed, else the age of the
last transaction replayed. A standby whose WAL receiver is not streaming has no
meaningful lag: it is behind by an unknown amount."""


class StatusReads(Protocol):
    """The reads the API may serve from a replica; every TaskStore has them."""

    async def get(self, task_id: int) -> Task | None: ...

    async def list_tasks(
        self, task_filter: TaskFilter, *, before_id: int | None, limit: int
    ) -> list[Task]: ...

    async def queue_stats(self, stuck_after_seconds: float) -> list[QueueStats]: ...

    async def outbox_stats(self) -> OutboxStats: ...


@dataclass
class ReplicaState:
    """What the last check found."""

    usable: bool = False
    lag_seconds: float | None = None
    reason: str = "not checked yet"
    checked_at: float = float("-inf")


class ReplicaReads:
    """``StatusReads`` from ``replica`` while it keeps up, else from ``primary``."""

    def __init__(
        self,
        primary: TaskStore,
        replica: TaskStore,
        *,
        max_lag_seconds: float,
        check_seconds: float,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag_seconds = max_lag_seconds
        self.check_seconds = check_seconds
        self.state = ReplicaState()
        self._checking: asyncio.Lock | None = None

    async def close(self) -> None:
        await self.replica.close()

    async def check(self, *, force: bool = False) -> ReplicaState:
        """The replica's state, measured again if the last measure is too old."""
        if not force and time.monotonic() - self.state.checked_at < self.check_seconds:
            return self.state
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:  # one check at a time; the others take its answer
            if not force and time.monotonic() - self.state.checked_at < self.check_seconds:
                return self.state
            self.state = await self._measure()
        return self.state

    async def _measure(self) -> ReplicaState:
        engine = getattr(self.replica, "engine", None)
        now = time.monotonic()
        if engine is None:
            return ReplicaState(False, None, "the replica store has no SQL engine", now)
        try:
            async with asyncio.timeout(self.check_seconds * 2 + 1):
                async with engine.connect() as conn:
                    row = (await conn.execute(LAG_SQL)).one()
        except Exception as exc:  # unreachable, refused, timed out: the primary serves
            state = ReplicaState(False, None, f"unreachable: {type(exc).__name__}", now)
        else:
            if not row.standby:
                state = ReplicaState(True, 0.0, "ok (not a standby)", now)
            elif row.receiver != "streaming":
                state = ReplicaState(False, None, f"not streaming ({row.receiver})", now)
            else:
                lag = float(row.lag or 0.0)
                if lag <= self.max_lag_seconds:
                    state = ReplicaState(True, lag, "ok", now)
                else:
                    state = ReplicaState(False, lag, f"lagging {lag:.1f}s", now)
        if state.usable != self.state.usable:
            log.info(
                "read_replica_usable" if state.usable else "read_replica_unusable",
                reason=state.reason,
                lag_seconds=state.lag_seconds,
            )
        return state

    async def _reader(self) -> TaskStore:
        return self.replica if (await self.check()).usable else self.primary

    async def _on_replica_failure(self, exc: StoreError) -> None:
        log.info("read_replica_failed", error=str(exc))
        self.state = ReplicaState(False, None, f"failed: {type(exc).__name__}", time.monotonic())

    async def get(self, task_id: int) -> Task | None:
        reader = await self._reader()
        if reader is self.replica:
            try:
                task = await self.replica.get(task_id)
            except StoreError as exc:
                await self._on_replica_failure(exc)
            else:
                if task is not None:
                    return task
                # Not there yet, perhaps: its writer may have just created it.
        return await self.primary.get(task_id)

    async def list_tasks(
        self, task_filter: TaskFilter, *, before_id: int | None, limit: int
    ) -> list[Task]:
        reader = await self._reader()
        if reader is self.replica:
            try:
                return await self.replica.list_tasks(task_filter, before_id=before_id, limit=limit)
            except StoreError as exc:
                await self._on_replica_failure(exc)
        return await self.primary.list_tasks(task_filter, before_id=before_id, limit=limit)

    async def queue_stats(self, stuck_after_seconds: float) -> list[QueueStats]:
        reader = await self._reader()
        if reader is self.replica:
            try:
                return await self.replica.queue_stats(stuck_after_seconds)
            except StoreError as exc:
                await self._on_replica_failure(exc)
        return await self.primary.queue_stats(stuck_after_seconds)

    async def outbox_stats(self) -> OutboxStats:
        reader = await self._reader()
        if reader is self.replica:
            try:
                return await self.replica.outbox_stats()
            except StoreError as exc:
                await self._on_replica_failure(exc)
        return await self.primary.outbox_stats()
