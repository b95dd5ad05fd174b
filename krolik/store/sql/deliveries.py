"""The webhook sender's side of the deliveries table: claim what is due, record answers.

The rows themselves are written by the database (the trigger of migration 0007) in the
statement that ends a task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Boolean, Float, and_, bindparam, case, or_, select, update

from krolik.states import DeliveryState, TaskStatus
from krolik.store.records import Delivery, DeliveryAnswer
from krolik.store.sql.core import SqlCore
from krolik.store.sql.rows import aware
from krolik.store.tables import deliveries

PENDING = DeliveryState.PENDING.value


class DeliveryStatements(SqlCore):
    async def claim_deliveries(self, limit: int, claim_seconds: float) -> list[Delivery]:
        """Two statements in one transaction: lock due rows nobody holds (SKIP LOCKED, so
        senders share the work), then hold them for ``claim_seconds`` and count the
        attempt, which fences the answer."""
        now = self.dialect.now()
        due = (
            select(deliveries.c.id)
            .where(
                deliveries.c.state == PENDING,
                deliveries.c.next_attempt_at <= now,
                or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < now),
            )
            .order_by(deliveries.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self._tx() as conn:
            ids = list((await conn.execute(due)).scalars().all())
            if not ids:
                return []
            rows = (
                (
                    await conn.execute(
                        update(deliveries)
                        .where(deliveries.c.id.in_(ids), deliveries.c.state == PENDING)
                        .values(
                            claimed_until=self.dialect.later(claim_seconds),
                            attempts=deliveries.c.attempts + 1,
                            last_attempt_at=self.dialect.clock(),
                        )
                        .returning(*deliveries.c)
                    )
                )
                .mappings()
                .all()
            )
        return sorted((row_to_delivery(row) for row in rows), key=lambda d: d.next_attempt_at)

    async def record_deliveries(self, answers: Sequence[DeliveryAnswer]) -> list[bool]:
        """One guarded statement per answer, in one transaction: only the holder of the
        latest claim (``attempts``) of a pending delivery changes it."""
        if not answers:
            return []
        clock = self.dialect.clock()
        delivered = bindparam("p_delivered", type_=Boolean)
        retrying = bindparam("p_retry", type_=Float)
        stmt = (
            update(deliveries)
            .where(
                deliveries.c.id == bindparam("p_id"),
                deliveries.c.attempts == bindparam("p_attempt"),
                deliveries.c.state == PENDING,
            )
            .values(
                state=case(
                    (delivered, DeliveryState.DELIVERED.value),
                    (retrying.is_(None), DeliveryState.FAILED.value),
                    else_=PENDING,
                ),
                delivered_at=case((delivered, clock), else_=None),
                next_attempt_at=case(
                    (and_(~delivered, retrying.is_not(None)), self.dialect.later_by(retrying)),
                    else_=deliveries.c.next_attempt_at,
                ),
                claimed_until=None,
                status_code=bindparam("p_status_code"),
                error=bindparam("p_error"),
                seconds=bindparam("p_seconds"),
            )
            .returning(deliveries.c.id)
        )
        done: set[int] = set()
        async with self._tx() as conn:
            for answer in answers:
                row = (await conn.execute(stmt, _answer_params(answer))).first()
                if row is not None:
                    done.add(row.id)
        return [answer.delivery_id in done for answer in answers]

    async def deliveries_of(self, task_id: int) -> list[Delivery]:
        stmt = select(deliveries).where(deliveries.c.task_id == task_id).order_by(deliveries.c.id)
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [row_to_delivery(row) for row in rows]


def _answer_params(answer: DeliveryAnswer) -> dict[str, Any]:
    return {
        "p_id": answer.delivery_id,
        "p_attempt": answer.attempt,
        "p_delivered": answer.delivered,
        "p_retry": answer.retry_in_seconds,
        "p_status_code": answer.status_code,
        "p_error": answer.error,
        "p_seconds": answer.seconds,
    }


def row_to_delivery(row: Mapping[Any, Any]) -> Delivery:
    return Delivery(
        id=row["id"],
        task_id=row["task_id"],
        run_token=row["run_token"],
        url=row["url"],
        task_status=TaskStatus(row["task_status"]),
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        created_at=aware(row["created_at"]),
        next_attempt_at=aware(row["next_attempt_at"]),
        last_attempt_at=aware(row["last_attempt_at"]),
        delivered_at=aware(row["delivered_at"]),
        status_code=row["status_code"],
        error=row["error"],
        seconds=row["seconds"],
    )
