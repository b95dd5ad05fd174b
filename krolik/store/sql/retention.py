"""What the cleaner deletes: finished tasks past their retention, a batch at a time.

A task's attempts, webhook deliveries and any outbox row left go with it (their foreign
keys cascade). Each batch is one statement that locks only the rows it deletes (SKIP
LOCKED: two cleaners take different rows), and names the final status it expects, so
a task retried meanwhile is not touched.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, delete, func, select, text

from krolik.store.records import PruneRule
from krolik.store.sql.core import SqlCore
from krolik.store.tables import tasks


class RetentionStatements(SqlCore):
    def _prunable(self, rule: PruneRule) -> ColumnElement[bool]:
        if not rule.status.is_final:
            raise ValueError(f"only finished tasks are pruned, not {rule.status.value} ones")
        condition = and_(
            tasks.c.status == rule.status.value,
            tasks.c.finished_at < self.dialect.ago(rule.older_than_seconds),
        )
        if rule.queues is not None:
            condition = and_(condition, tasks.c.queue.in_(list(rule.queues)))
        if rule.except_queues:
            condition = and_(condition, tasks.c.queue.not_in(list(rule.except_queues)))
        return condition

    async def prune(
        self, rule: PruneRule, limit: int, *, seconds_limit: float | None = None
    ) -> int:
        if rule.queues is not None and not rule.queues:
            return 0
        # The batch is chosen once (a CTE kept apart): as a plain ``IN (subquery)`` the
        # planner may rescan it once per row of a nested loop, and each rescan skips the
        # rows this statement already deleted and takes the next ones past the limit.
        batch = (
            select(tasks.c.id)
            .where(self._prunable(rule))
            .order_by(tasks.c.finished_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("batch")
            .prefix_with("MATERIALIZED")
        )
        stmt = (
            delete(tasks)
            .where(tasks.c.id.in_(select(batch.c.id)), tasks.c.status == rule.status.value)
            .returning(tasks.c.id)
        )
        limit_time = (
            None if seconds_limit is None else self.dialect.statement_time_limit(seconds_limit)
        )
        async with self._tx() as conn:
            if limit_time is not None:
                await conn.execute(text(limit_time))
            return len((await conn.execute(stmt)).all())

    async def count_prunable(self, rule: PruneRule) -> dict[str, int]:
        if rule.queues is not None and not rule.queues:
            return {}
        stmt = (
            select(tasks.c.queue, func.count()).where(self._prunable(rule)).group_by(tasks.c.queue)
        )
        async with self._tx() as conn:
            return {queue: int(n) for queue, n in (await conn.execute(stmt)).all()}
