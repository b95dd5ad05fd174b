"""The PostgreSQL store: the production source of truth."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from krolik.log import get_logger
from krolik.settings import DatabaseSettings
from krolik.states import TaskStatus
from krolik.store.dialects import PostgresDialect
from krolik.store.failures import Failure, classify, raise_classified
from krolik.store.records import (
    Delivery,
    DeliveryAnswer,
    Enqueued,
    NewTask,
    OutboxEntry,
    RunRef,
    Task,
)
from krolik.store.sql.deliveries import row_to_delivery
from krolik.store.sql.store import SqlTaskStore
from krolik.store.statement_pool import StatementPool, set_json_codecs

log = get_logger(__name__)


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# The hot paths return exactly Task's fields, in its order, so a record becomes a Task
# without a dict or a conversion per column (asyncpg already gives aware datetimes).
TASK_FIELDS = [field.name for field in fields(Task) if field.name != "gated"]
STATUS_INDEX = TASK_FIELDS.index("status")


def returning(alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in TASK_FIELDS)


def record_to_task(record: Any) -> Task:
    values = list(record)
    values[STATUS_INDEX] = TaskStatus(values[STATUS_INDEX])
    return Task(*values)


def enqueued(record: Any) -> Enqueued:
    """A row of ENQUEUE_SQL: the task's columns, then the id of an outbox row handed over."""
    values = list(record)
    outbox_id = values.pop()
    values[STATUS_INDEX] = TaskStatus(values[STATUS_INDEX])
    task = Task(*values)
    entry = (
        None
        if outbox_id is None
        else OutboxEntry(id=outbox_id, task_id=task.id, queue=task.queue, name=task.name)
    )
    return Enqueued(task, created=True, outbox=entry)


# The hot path of submission: tasks and their outbox rows in ONE statement (one round
# trip, one implicit transaction), the rows fed as arrays. Used for tasks without an
# idempotency key; keyed ones take the general path of sql.py.
ENDED_CHANNEL = "krolik_task_ended"
"""What the trigger krolik_tasks_ended notifies: the ended task's record as JSON, or its id
when the record is too big for a notice (migration 0007)."""
_TIME_FIELDS = frozenset(field.name for field in fields(Task) if "datetime" in str(field.type))


def task_of_notice(body: str) -> tuple[int, Task | None]:
    """The task a notice of ENDED_CHANNEL names, and its record when the notice holds it."""
    if not body.startswith("{"):
        return int(body), None
    row = orjson.loads(body)
    values = {name: row.get(name) for name in TASK_FIELDS}
    for name in _TIME_FIELDS:
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name])
    values["status"] = TaskStatus(values["status"])
    if values["timeout_seconds"] is not None:
        values["timeout_seconds"] = float(values["timeout_seconds"])
    return int(values["id"]), Task(**values)


ENQUEUE_SQL = """
WITH new AS (
    INSERT INTO krolik_tasks (
        name, queue, payload, status, attempts, max_attempts, timeout_seconds,
        request_id, created_by, webhook_url, traceparent, cancel_requested, run_at,
        expires_at, priority, concurrency_key, created_at, updated_at
    )
    SELECT n, q, p::jsonb, 'pending', 0, m, t, r, c, w, tp, false,
           coalesce(ra, clock_timestamp() + make_interval(secs => d)),
           coalesce(ea, clock_timestamp() + make_interval(secs => ei)),
           coalesce(pr, (SELECT h.priority FROM krolik_handlers h WHERE h.name = n),
                    (SELECT g.default_priority FROM krolik_queues g WHERE g.name = q), 0),
           ck, clock_timestamp(), clock_timestamp()
    FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::text[],
        $7::text[], $8::timestamptz[], $9::float8[], $10::text[], $11::text[],
        $12::timestamptz[], $13::float8[], $15::int[], $16::text[]
    ) WITH ORDINALITY AS u(n, q, p, m, t, r, c, ra, d, w, tp, ea, ei, pr, ck, ord)
    ORDER BY ord
    RETURNING *
), dispatch AS (
    INSERT INTO krolik_outbox (task_id, queue, name, available_at, claimed_until)
    SELECT id, queue, name, run_at,
           CASE WHEN $14::float8 IS NOT NULL AND run_at <= clock_timestamp()
                THEN clock_timestamp() + make_interval(secs => $14) END
    FROM new
    RETURNING id, task_id, claimed_until IS NOT NULL AS handed
)
SELECT {columns}, CASE WHEN dispatch.handed THEN dispatch.id END
FROM new JOIN dispatch ON dispatch.task_id = new.id
ORDER BY new.id
""".format(columns=returning("new"))
"""With $14 (seconds), the outbox rows of tasks due at once are written claimed for
the caller, and the last column is their id (see ``TaskStore.enqueue``)."""


# A worker's claims and completions, many runs per statement (the guards of sql.py's
# claim_many and complete_many, row by row). Conditions compare with now(), one time for
# the statement; recorded times are clock_timestamp(). The rows are found by id alone:
# the name and status guards are written with IS NOT DISTINCT FROM (the same test on
# these NOT NULL columns), which no index serves and no partial index's predicate
# follows from. With '=', a table autovacuum had not analyzed yet was claimed through
# the name's index (every task of the name) and the pending or processing index (every
# row version that was in that state since the last vacuum, which bitmap scans never
# mark dead): each batch read tens of thousands of entries.
CLAIM_MANY_SQL = """
UPDATE krolik_tasks AS t
SET status = 'processing',
    attempts = t.attempts + 1,
    run_token = t.run_token + 1,
    max_attempts = coalesce(t.max_attempts, h.default_max),
    worker_id = $2,
    lease_expires_at = clock_timestamp() + make_interval(secs => $3),
    started_at = clock_timestamp(),
    updated_at = clock_timestamp(),
    progress = NULL
FROM unnest($1::bigint[]) AS c(id), unnest($4::text[], $5::int[]) AS h(name, default_max)
WHERE t.id = ANY($1::bigint[]) AND t.id = c.id AND t.name IS NOT DISTINCT FROM h.name
  AND t.status IS NOT DISTINCT FROM 'pending' AND t.run_at <= now()
  AND (t.expires_at IS NULL OR t.expires_at > now())
  AND NOT EXISTS (
      SELECT 1 FROM krolik_queues g
      WHERE g.name = t.queue
        AND (g.paused OR g.max_running IS NOT NULL OR g.max_running_per_key IS NOT NULL
             OR g.rate_limit IS NOT NULL)
  )
  AND NOT EXISTS (
      SELECT 1 FROM krolik_tasks p
      WHERE p.queue = t.queue AND p.status = 'pending' AND p.priority > 0
        AND p.priority > t.priority AND p.run_at <= now()
        AND (p.expires_at IS NULL OR p.expires_at > now())
  )
RETURNING {columns}
""".format(columns=returning("t"))
"""Tasks of a gated queue (krolik_queues) are left to the gated claim, and a task with a
task of higher priority due in its queue to the claim of the best (sql/flow.py). The
second test reads the index of pending tasks above priority 0: nothing, while no task
has a priority."""

# The claims of gated queues: the functions of migration 0013, one round trip each. The
# first returns what it claimed (processing) and the named tasks of queues it found
# ungated as they are (pending), for the claim of the best (sql/flow.py).
CLAIM_GATED_SQL = """
SELECT {columns} FROM krolik_claim_gated($1::bigint[], $2, $3, $4::text[], $5::int[]) AS t
""".format(columns=returning("t"))
CLAIM_HELD_SQL = """
SELECT {columns} FROM krolik_claim_held($1, $2, $3, $4, $5::text[], $6::int[]) AS t
""".format(columns=returning("t"))
GATED_FIRST_SECONDS = 10.0
"""How long after a claim in a gated queue a store's claims try the gated claim first."""
MAY_WAKE_SQL = """
SELECT EXISTS (
    SELECT 1 FROM krolik_tasks WHERE queue = $1 AND status = 'pending' AND held IS NOT NULL
) AND NOT coalesce((
    SELECT g.paused OR (g.max_running IS NOT NULL AND g.max_running <= (
        SELECT count(*) FROM krolik_tasks r WHERE r.queue = $1 AND r.status = 'processing'))
    FROM krolik_queues g WHERE g.name = $1
), false)
"""
"""Whether a wake-up of the queue could dispatch anything: it holds tasks, and is neither
paused nor at its cap as far as this snapshot sees (read without the lock; a slot that
frees meanwhile is taken by the run that freed it, or woken by the waker)."""

COMPLETED = """
done AS (
    UPDATE krolik_tasks AS t
    SET status = 'done',
        result = c.result::jsonb,
        error = NULL,
        traceback = NULL,
        lease_expires_at = NULL,
        finished_at = clock_timestamp(),
        updated_at = clock_timestamp()
    FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS c(id, token, result)
    WHERE t.id = c.id AND t.status IS NOT DISTINCT FROM 'processing'
      AND t.run_token = c.token
    RETURNING t.id, t.run_token, t.attempts, t.worker_id, t.started_at, t.finished_at
), recorded AS (
    INSERT INTO krolik_attempts
        (task_id, run_token, attempt, worker_id, started_at, finished_at, outcome)
    SELECT id, run_token, attempts, worker_id, started_at, finished_at, 'succeeded' FROM done
)"""
"""Runs ended done ($1 ids, $2 tokens, $3 results), each with its attempt record."""
COMPLETE_MANY_SQL = f"""
WITH {COMPLETED}
SELECT id, run_token FROM done
"""

COMPLETE_AND_CLAIM_HELD_SQL = """
WITH {completed}
SELECT d.completed, {columns}
FROM (SELECT count(*) AS completed FROM done) AS d
LEFT JOIN LATERAL (
    SELECT * FROM krolik_claim_held($4, $5, $6, $7, $8::text[], $9::int[])
    WHERE d.completed > 0
) AS t ON true
""".format(completed=COMPLETED, columns=returning("t"))
"""A gated run's end and the claim of the best held tasks into its slot, in one statement
and one commit. The claim runs once the completion has (the aggregate over ``done`` comes
first) and its function's statements see it, as a volatile function's see the changes of
the statement that calls it; were that ever not so, the claim would count the run as still
running and take one task fewer, never one too many."""


# The relay's two statements, on the path of every task from commit to worker.
CLAIM_OUTBOX_SQL = """
UPDATE krolik_outbox
SET claimed_until = clock_timestamp() + make_interval(secs => $2)
WHERE id IN (
    SELECT id FROM krolik_outbox
    WHERE available_at <= now()
      AND (claimed_until IS NULL OR claimed_until < now())
      AND queue <> ALL($3::text[])
    ORDER BY available_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, task_id, queue, name
"""

DELETE_OUTBOX_SQL = "DELETE FROM krolik_outbox WHERE id = ANY($1::bigint[])"

# What waiting, event streams and the webhook sender read on every change notice: tasks by
# id, in one round trip (the SQLAlchemy path costs a BEGIN and a COMMIT more).
GET_MANY_SQL = "SELECT {columns} FROM krolik_tasks t WHERE t.id = ANY($1::bigint[])".format(
    columns=returning("t")
)

# The webhook sender's claim and its answers (the statements of sql/deliveries.py, each
# in one round trip).
CLAIM_DELIVERIES_SQL = """
UPDATE krolik_deliveries
SET claimed_until = clock_timestamp() + make_interval(secs => $2),
    attempts = attempts + 1,
    last_attempt_at = clock_timestamp()
WHERE id IN (
    SELECT id FROM krolik_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
      AND (claimed_until IS NULL OR claimed_until < now())
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING *
"""
RECORD_DELIVERIES_SQL = """
UPDATE krolik_deliveries AS d
SET state = CASE WHEN a.delivered THEN 'delivered'
                 WHEN a.retry IS NULL THEN 'failed' ELSE 'pending' END,
    delivered_at = CASE WHEN a.delivered THEN clock_timestamp() END,
    next_attempt_at = CASE WHEN NOT a.delivered AND a.retry IS NOT NULL
                           THEN clock_timestamp() + make_interval(secs => a.retry)
                           ELSE d.next_attempt_at END,
    claimed_until = NULL,
    status_code = a.code,
    error = a.error,
    seconds = a.seconds
FROM unnest($1::bigint[], $2::int[], $3::bool[], $4::float8[], $5::int[], $6::text[],
            $7::float8[]) AS a(id, attempt, delivered, retry, code, error, seconds)
WHERE d.id = a.id AND d.attempts = a.attempt AND d.state = 'pending'
RETURNING d.id
"""


APPLICATION_NAME = "krolik"
COMMAND_TIMEOUT_SECONDS = 30


def statement_cache_args(pgbouncer: bool) -> dict[str, Any]:
    """asyncpg's arguments for the pooling in between: behind PgBouncer's transaction
    mode a named prepared statement may be gone (or another's) on the next statement's
    server connection, so none is cached; asyncpg then prepares each one unnamed."""
    return {"statement_cache_size": 0} if pgbouncer else {}


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    cache_args: dict[str, Any] = statement_cache_args(settings.pgbouncer)
    if settings.pgbouncer:
        # SQLAlchemy's own cache of asyncpg statements, by name: off too, and the names
        # of what it prepares unique, so two clients' statements never collide.
        cache_args |= {
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _unique_statement_name,
        }
    engine = create_async_engine(
        settings.dsn,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        # No pre-ping: it costs a round trip per checkout. A connection found dead
        # fails one call (503) and SQLAlchemy then drops the whole stale pool.
        pool_timeout=settings.connect_timeout_seconds,
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "command_timeout": COMMAND_TIMEOUT_SECONDS,
            "server_settings": {"application_name": APPLICATION_NAME},
            **cache_args,
        },
    )

    @event.listens_for(engine.sync_engine, "handle_error")
    def _drop_unavailable(context: ExceptionContext) -> None:
        # A connection whose server cannot serve us (read-only after a demotion, shutting
        # down) is dropped with its pool, as a lost one is: the next checkout connects
        # afresh, and with a multi-host URL finds the current primary.
        if classify(context.original_exception) is Failure.UNAVAILABLE:
            context.is_disconnect = True

    return engine


def _unique_statement_name() -> str:
    return f"__krolik_{uuid.uuid4().hex}__"


class PostgresTaskStore(SqlTaskStore):
    """The statements of ``store/sql/`` through SQLAlchemy, and PostgreSQL's own hot ones
    (above) straight to asyncpg, on connections of a pool of their own
    (``statement_pool.py``) to the same database."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        pool_size: int = 10,
        timeout: float = 5.0,
        pgbouncer: bool = False,
    ) -> None:
        super().__init__(engine, PostgresDialect())
        self._gated_claim_at = -GATED_FIRST_SECONDS
        """When a claim of this store last started a task of a gated queue (monotonic)."""
        cache_args = statement_cache_args(pgbouncer)
        self.pgbouncer = pgbouncer
        self.settings: DatabaseSettings | None = None
        _, connect_args = engine.dialect.create_connect_args(engine.url)

        async def connect() -> asyncpg.Connection:
            connection = await asyncpg.connect(
                **connect_args,
                timeout=timeout,
                command_timeout=COMMAND_TIMEOUT_SECONDS,
                server_settings={"application_name": APPLICATION_NAME},
                **cache_args,
            )
            try:
                await set_json_codecs(connection)
            except BaseException:  # cancelled or failed: not left to the garbage collector
                connection.terminate()
                raise
            return connection

        self.statements = StatementPool(connect, max_size=pool_size, wait_timeout=timeout)
        self._connect = connect

    async def listen_ended(
        self, handler: Callable[[int, Task | None], None], on_lost: Callable[[], None]
    ) -> Callable[[], Awaitable[None]] | None:
        """PostgreSQL's word, at commit, of each task that ended (the trigger
        krolik_tasks_ended): ``handler(task_id, record)``, on a connection of its own,
        until the returned close is awaited; ``on_lost`` when that connection is gone.
        Behind PgBouncer's transaction mode a LISTEN does not hold: None, and RabbitMQ's
        notices serve alone."""
        if self.pgbouncer:
            return None

        def heard(_connection: Any, _pid: int, _channel: str, body: str) -> None:
            try:
                task_id, task = task_of_notice(body)
            except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
                log.warning("ended_notice_unreadable", size=len(body))
                return
            handler(task_id, task)

        try:
            connection = await self._connect()
        except Exception as exc:
            raise_classified(exc)
            raise
        try:
            await connection.add_listener(ENDED_CHANNEL, heard)
        except BaseException as exc:  # cancelled (a stop at start-up) or failed: close it
            connection.terminate()
            if isinstance(exc, Exception):
                raise_classified(exc)
            raise

        def lost(_connection: Any) -> None:
            on_lost()

        connection.add_termination_listener(lost)

        async def close() -> None:
            connection.remove_termination_listener(lost)  # closed by us: not lost
            with contextlib.suppress(Exception):
                await connection.close(timeout=2)

        return close

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> PostgresTaskStore:
        store = cls(
            create_engine(settings),
            pool_size=settings.pool_size,
            timeout=settings.connect_timeout_seconds,
            pgbouncer=settings.pgbouncer,
        )
        store.settings = settings
        return store

    def sibling(self) -> PostgresTaskStore:
        settings = self.settings or DatabaseSettings(
            url=SecretStr(self.engine.url.render_as_string(hide_password=False)),
            pgbouncer=self.pgbouncer,
        )
        small = settings.model_copy(update={"pool_size": 1, "max_overflow": 1})
        return PostgresTaskStore.from_settings(small)

    async def close(self) -> None:
        await self.statements.close()
        await super().close()

    # -- the hot statements ------------------------------------------------------------
    async def enqueue(
        self,
        new_tasks: Sequence[NewTask],
        *,
        claim_outbox_seconds: float | None = None,
        refuse_mismatch: bool = False,
    ) -> list[Enqueued]:
        """Tasks without keys (nearly every submission): ENQUEUE_SQL alone, one round trip
        on the statement pool. A batch with keys takes the general path, in one
        transaction, where the same statement inserts its plain tasks."""
        if new_tasks and all(new.is_plain for new in new_tasks):
            arguments = enqueue_arguments(new_tasks, claim_outbox_seconds)
            try:
                records = await self._fetch(ENQUEUE_SQL, *arguments)
            except asyncpg.PostgresError:
                # Data PostgreSQL refuses: the general path raises the same error as every
                # other statement of the store does (nothing of the batch was written).
                pass
            else:
                # The statement pool's codecs already decoded the JSON columns.
                return [enqueued(record) for record in records]
        return await super().enqueue(
            new_tasks, claim_outbox_seconds=claim_outbox_seconds, refuse_mismatch=refuse_mismatch
        )

    async def _insert_plain(
        self, conn: AsyncConnection, new_tasks: Sequence[NewTask], claim_seconds: float | None
    ) -> list[Enqueued]:
        arguments = tuple(enqueue_arguments(new_tasks, claim_seconds))  # one set, not many
        result = await conn.exec_driver_sql(ENQUEUE_SQL, arguments)
        return [enqueued(row) for row in result.all()]

    async def claim_many(
        self,
        task_ids: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task | None]:
        """The plain claim first, then the gated one for what it refused; while this store
        claims in gated queues (lately), the other way round, so that each claim costs one
        round trip where most do."""
        if not task_ids or not handlers:
            return [None] * len(task_ids)
        if time.monotonic() - self._gated_claim_at < GATED_FIRST_SECONDS:
            gated, ungated = await self._claim_gated(task_ids, worker_id, lease_seconds, handlers)
            plain = await self._claim_plain(ungated, worker_id, lease_seconds, handlers)
            taken = {task.id for task in plain if task is not None}
            outranked = [task_id for task_id in ungated if task_id not in taken]
        else:
            plain = await self._claim_plain(task_ids, worker_id, lease_seconds, handlers)
            refused = [task_id for task_id, task in zip(task_ids, plain, strict=True) if not task]
            gated, outranked = await self._claim_gated(refused, worker_id, lease_seconds, handlers)
        if outranked:
            gated += await self._claim_outranked(outranked, worker_id, lease_seconds, handlers)
        # One winner per id: the first claim naming it; what claims took instead of the
        # tasks named (the best waiting) fills the places of those refused.
        by_id = {task.id: task for task in plain if task is not None}
        answered = iter(gated)
        return [by_id.pop(task_id, None) or next(answered, None) for task_id in task_ids]

    async def _claim_plain(
        self,
        task_ids: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task | None]:
        """CLAIM_MANY_SQL: the named tasks of ungated queues, each in its id's place."""
        if not task_ids:
            return []
        records = await self._fetch(
            CLAIM_MANY_SQL,
            list(task_ids),
            worker_id,
            float(lease_seconds),
            list(handlers),
            list(handlers.values()),
        )
        claimed = {task.id: task for task in map(record_to_task, records)}
        return [claimed.pop(task_id, None) for task_id in task_ids]

    async def _claim_gated(
        self,
        task_ids: Sequence[int],
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> tuple[list[Task], list[int]]:
        """krolik_claim_gated: what it claimed in gated queues, and the named tasks of
        ungated queues it left alone."""
        if not task_ids:
            return [], []
        records = await self._fetch(
            CLAIM_GATED_SQL,
            list(task_ids),
            worker_id,
            float(lease_seconds),
            list(handlers),
            list(handlers.values()),
        )
        claimed: list[Task] = []
        ungated: list[int] = []
        for task in map(record_to_task, records):
            if task.status is TaskStatus.PROCESSING:
                claimed.append(replace(task, gated=True))
            else:
                ungated.append(task.id)
        if claimed:
            self._gated_claim_at = time.monotonic()
        return claimed, ungated

    async def claim_held(
        self,
        queue: str,
        most: int,
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> list[Task]:
        if most <= 0 or not handlers:
            return []
        records = await self._fetch(
            CLAIM_HELD_SQL,
            queue,
            most,
            worker_id,
            float(lease_seconds),
            list(handlers),
            list(handlers.values()),
        )
        if records:
            self._gated_claim_at = time.monotonic()
        return [replace(record_to_task(record), gated=True) for record in records]

    async def complete_and_claim_held(
        self,
        run: RunRef,
        result: Any,
        queue: str,
        most: int,
        worker_id: str,
        lease_seconds: float,
        handlers: Mapping[str, int],
    ) -> tuple[bool, list[Task]]:
        if most <= 0 or not handlers:
            return await self.complete(run, result), []
        records = await self._fetch(
            COMPLETE_AND_CLAIM_HELD_SQL,
            [run.task_id],
            [run.token],
            [json_dumps(result)],
            queue,
            most,
            worker_id,
            float(lease_seconds),
            list(handlers),
            list(handlers.values()),
        )
        claimed = [
            replace(record_to_task(tuple(record)[1:]), gated=True)
            for record in records
            if record[1] is not None
        ]
        if claimed:
            self._gated_claim_at = time.monotonic()
        return bool(records[0][0]), claimed

    async def wake(self, queue: str) -> int:
        [worth] = await self._fetch(MAY_WAKE_SQL, queue)  # the common answer, no, at once
        if not worth[0]:
            return 0
        return await super().wake(queue)

    async def complete_many(self, completions: Sequence[tuple[RunRef, Any]]) -> list[bool]:
        if not completions:
            return []
        records = await self._fetch(
            COMPLETE_MANY_SQL,
            [run.task_id for run, _ in completions],
            [run.token for run, _ in completions],
            [json_dumps(result) for _, result in completions],
        )
        done = {(record["id"], record["run_token"]) for record in records}
        return [(run.task_id, run.token) in done for run, _ in completions]

    async def claim_outbox(
        self, limit: int, claim_seconds: float, *, skip_queues: Sequence[str] = ()
    ) -> list[OutboxEntry]:
        records = await self._fetch(
            CLAIM_OUTBOX_SQL, limit, float(claim_seconds), list(skip_queues)
        )
        entries = [
            OutboxEntry(id=r["id"], task_id=r["task_id"], queue=r["queue"], name=r["name"])
            for r in records
        ]
        entries.sort(key=lambda entry: entry.id)
        return entries

    async def delete_outbox(self, entry_ids: Sequence[int]) -> None:
        if entry_ids:
            await self._fetch(DELETE_OUTBOX_SQL, list(entry_ids))

    async def get_many(self, task_ids: Sequence[int]) -> list[Task]:
        if not task_ids:
            return []
        return [record_to_task(r) for r in await self._fetch(GET_MANY_SQL, list(task_ids))]

    async def claim_deliveries(self, limit: int, claim_seconds: float) -> list[Delivery]:
        records = await self._fetch(CLAIM_DELIVERIES_SQL, limit, float(claim_seconds))
        return sorted(map(row_to_delivery, records), key=lambda d: d.next_attempt_at)

    async def record_deliveries(self, answers: Sequence[DeliveryAnswer]) -> list[bool]:
        if not answers:
            return []
        records = await self._fetch(
            RECORD_DELIVERIES_SQL,
            [a.delivery_id for a in answers],
            [a.attempt for a in answers],
            [a.delivered for a in answers],
            [a.retry_in_seconds for a in answers],
            [a.status_code for a in answers],
            [a.error for a in answers],
            [a.seconds for a in answers],
        )
        done = {record["id"] for record in records}
        return [answer.delivery_id in done for answer in answers]

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """One statement on a connection of the statement pool: one round trip, its own
        transaction."""
        try:
            return await self.statements.fetch(sql, *args)
        except Exception as exc:
            raise_classified(exc)
            raise


def enqueue_arguments(new_tasks: Sequence[NewTask], claim_seconds: float | None) -> list[Any]:
    """ENQUEUE_SQL's arguments: one array per column, then the claim's seconds."""
    columns: tuple[list[Any], ...] = tuple([] for _ in range(15))
    for new in new_tasks:
        for column, value in zip(
            columns,
            (
                new.name,
                new.queue,
                json_dumps(new.payload),
                new.max_attempts,
                new.timeout_seconds,
                new.request_id,
                new.created_by,
                new.run_at.astimezone(UTC) if new.run_at is not None else None,
                float(new.delay_seconds or 0),
                new.webhook_url,
                new.traceparent,
                new.expires_at.astimezone(UTC) if new.expires_at is not None else None,
                new.expires_in_seconds,
                new.priority,
                new.concurrency_key,
            ),
            strict=True,
        ):
            column.append(value)
    *task_columns, priorities, keys = columns
    return [
        *task_columns,
        None if claim_seconds is None else float(claim_seconds),
        priorities,
        keys,
    ]
