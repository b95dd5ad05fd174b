"""Enqueue in the application's own transaction: the task exists if and only if it commits.

For an application that shares Krolik's PostgreSQL database. The task and its outbox row
are written by the statement ``POST /tasks/`` uses, on the caller's connection and so in
the caller's transaction: rolled back with it, or committed with it and then published
by a relay (beside each ``krolik api``) within its poll, ``APP__RELAY__POLL_SECONDS``.
The task is checked by the rules of ``POST /tasks/`` first.

    async with pool.acquire() as conn, conn.transaction():  # asyncpg
        await conn.execute("INSERT INTO orders ...")
        await enqueue(conn, "send_receipt", {"order": 42})

    async with session.begin():  # SQLAlchemy, an AsyncSession or AsyncConnection
        session.add(order)
        await enqueue(session, "send_receipt", {"order": 42})

Idempotency and unique keys need the API (their statements look for an existing task).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from krolik.store.records import NewTask, Task


async def enqueue(
    conn: Any,
    name: str,
    payload: Any = None,
    *,
    queue: str = "default",
    delay_seconds: float | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    priority: int | None = None,
    concurrency_key: str | None = None,
    expires_at: datetime | None = None,
    expires_in: float | None = None,
    webhook_url: str | None = None,
) -> Task:
    """Insert one task in ``conn``'s transaction (an asyncpg connection, or a SQLAlchemy
    ``AsyncConnection`` or ``AsyncSession`` on asyncpg); the task as inserted."""
    [task] = await enqueue_many(
        conn,
        name,
        [payload],
        queue=queue,
        delay_seconds=delay_seconds,
        run_at=run_at,
        max_attempts=max_attempts,
        timeout_seconds=timeout_seconds,
        priority=priority,
        concurrency_key=concurrency_key,
        expires_at=expires_at,
        expires_in=expires_in,
        webhook_url=webhook_url,
    )
    return task


async def enqueue_many(
    conn: Any, name: str, payloads: Iterable[Any], *, queue: str = "default", **options: Any
) -> list[Task]:
    """Insert one task of ``name`` per payload, in one statement, in ``conn``'s
    transaction; the tasks in the order of the payloads. ``options`` as for ``enqueue``."""
    new_tasks = [checked_task(name, payload, queue, **options) for payload in payloads]
    if not new_tasks:
        return []
    from krolik.store.postgres import ENQUEUE_SQL, enqueue_arguments, enqueued

    arguments = enqueue_arguments(new_tasks, None)
    rows = await _fetch(conn, ENQUEUE_SQL, arguments)
    # The payload as given: a connection without a JSON codec reads it back as text
    # (and a new task has no result or progress yet).
    return [
        replace(enqueued(row).task, payload=new.payload)
        for row, new in zip(rows, new_tasks, strict=True)
    ]


def checked_task(name: str, payload: Any, queue: str = "default", **options: Any) -> NewTask:
    """The task as ``POST /tasks/`` would take it (ValueError with its message if not)."""
    from pydantic import ValidationError

    from krolik.api.schemas import TaskCreate

    try:
        body = TaskCreate(name=name, payload=payload, queue=queue, **options)
    except ValidationError as exc:
        raise ValueError(f"not a valid task: {exc}") from None
    return NewTask(
        name=name,
        queue=queue,
        payload=body.payload,
        max_attempts=body.max_attempts,
        timeout_seconds=body.timeout_seconds,
        run_at=body.run_at,
        delay_seconds=body.delay_seconds,
        webhook_url=body.webhook_url,
        expires_at=body.expires_at,
        expires_in_seconds=body.expires_in,
        priority=body.priority,
        concurrency_key=body.concurrency_key,
    )


async def _fetch(conn: Any, sql: str, arguments: Sequence[Any]) -> list[Any]:
    """Run ``sql`` on the caller's connection, whichever kind it is."""
    if hasattr(conn, "exec_driver_sql"):  # a SQLAlchemy AsyncConnection
        return list((await conn.exec_driver_sql(sql, tuple(arguments))).all())
    if hasattr(conn, "connection") and hasattr(conn, "add"):  # a SQLAlchemy AsyncSession
        connection = await conn.connection()
        return list((await connection.exec_driver_sql(sql, tuple(arguments))).all())
    if hasattr(conn, "fetch"):  # an asyncpg connection
        return list(await conn.fetch(sql, *arguments))
    raise TypeError(
        f"enqueue needs an asyncpg connection or a SQLAlchemy AsyncConnection or "
        f"AsyncSession, not {type(conn).__name__}"
    )
