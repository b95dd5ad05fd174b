"""The schema, as SQLAlchemy Core tables; Alembic migrations must produce exactly this."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from krolik.states import AttemptOutcome, DeliveryState, TaskStatus

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer(), "sqlite")
"""SQLite only auto-numbers an INTEGER PRIMARY KEY."""
JsonValue = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)
_status_list = ", ".join(f"'{s.value}'" for s in TaskStatus)
_outcome_list = ", ".join(f"'{o.value}'" for o in AttemptOutcome)
_delivery_state_list = ", ".join(f"'{d.value}'" for d in DeliveryState)

tasks = Table(
    "krolik_tasks",
    metadata,
    Column("id", Id, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("payload", JsonValue, nullable=True),
    Column("status", Text, nullable=False),
    Column("result", JsonValue, nullable=True),
    Column("error", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # max_attempts is NULL until the first claim writes in the handler's own default.
    Column("max_attempts", Integer, nullable=True),
    Column("timeout_seconds", Float, nullable=True),
    Column("idempotency_key", Text, nullable=True),
    # Keys are unique per caller (the API key's name, '' without authentication), and
    # remember a fingerprint of the request that created the task: the same key sent
    # with another body is refused (409), as payment APIs do.
    Column("idempotency_scope", Text, nullable=True),
    Column("request_hash", Text, nullable=True),
    # The HTTP request that created the task (carried into the worker's logs), and the
    # name of the API key it came with (None without authentication).
    Column("request_id", Text, nullable=True),
    Column("created_by", Text, nullable=True),
    Column("worker_id", Text, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    # The fencing token of the current (or last) run: every claim takes the next one and
    # nothing ever lowers it, so a stale run, whatever else it shares with the current
    # one (attempt number, worker), never matches the guard of a newer run's statements.
    Column("run_token", BigInteger, nullable=False, server_default=text("0")),
    Column("run_at", Timestamp, nullable=False),
    Column("lease_expires_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("started_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=True),
    # What the current run's handler last said of itself (fraction, message, at), written
    # at most once a second per task; a new claim clears it.
    Column("progress", JsonValue, nullable=True),
    # Where Krolik POSTs the task's record when it ends (a delivery row is written by a
    # trigger in the statement that ends it: see krolik_deliveries).
    Column("webhook_url", Text, nullable=True),
    # The W3C trace context the submit came with: the spans of its runs (with the
    # OpenTelemetry extra) are its children.
    Column("traceparent", Text, nullable=True),
    # A task not started by then ends expired and never runs (the claim refuses it).
    Column("expires_at", Timestamp, nullable=True),
    # A unique task holds its key (per task name) while it is pending, while it runs if
    # ``unique_running``, and until ``unique_until``; a submit of the same key meanwhile
    # gets this task back. A holder no longer holding is let go (key cleared) by the next
    # submit of its key, in that submit's transaction.
    Column("unique_key", Text, nullable=True),
    Column("unique_until", Timestamp, nullable=True),
    Column("unique_running", Boolean, nullable=False, server_default=text("false")),
    # Flow control: higher runs first where the queue's gates decide (krolik_queues); a
    # task with a key counts against its queue's per-key limit. ``held`` says why a
    # pending task of a gated queue was refused (paused, max_running, key_limit,
    # rate_limit): it waits here, with no message, until a slot frees and wakes it.
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("concurrency_key", Text, nullable=True),
    Column("held", Text, nullable=True),
    CheckConstraint(f"status IN ({_status_list})", name="status"),
    CheckConstraint("attempts >= 0", name="attempts"),
    CheckConstraint("max_attempts IS NULL OR max_attempts >= 1", name="max_attempts"),
    Index(
        "ix_krolik_tasks_idempotency_scope_idempotency_key",
        "idempotency_scope",
        "idempotency_key",
        unique=True,
    ),
    Index(
        "ix_krolik_tasks_name_unique_key",
        "name",
        "unique_key",
        unique=True,
        postgresql_where=text("unique_key IS NOT NULL"),
        sqlite_where=text("unique_key IS NOT NULL"),
    ),
    Index("ix_krolik_tasks_queue_status", "queue", "status"),
    Index("ix_krolik_tasks_status_id", "status", "id"),
    Index("ix_krolik_tasks_name_id", "name", "id"),
    Index("ix_krolik_tasks_finished_at", "finished_at"),
    Index(
        "ix_krolik_tasks_pending_run_at",
        "run_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index(
        "ix_krolik_tasks_pending_expires_at",
        "expires_at",
        postgresql_where=text("status = 'pending' AND expires_at IS NOT NULL"),
        sqlite_where=text("status = 'pending' AND expires_at IS NOT NULL"),
    ),
    Index(
        "ix_krolik_tasks_processing_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'processing'"),
        sqlite_where=text("status = 'processing'"),
    ),
    # In the order the claims of gated queues take them: priority first, highest first.
    Index(
        "ix_krolik_tasks_held",
        "queue",
        text("priority DESC"),
        "run_at",
        "id",
        postgresql_where=text("status = 'pending' AND held IS NOT NULL"),
        sqlite_where=text("status = 'pending' AND held IS NOT NULL"),
    ),
    Index(
        "ix_krolik_tasks_pending_key",
        "queue",
        "concurrency_key",
        text("priority DESC"),
        "run_at",
        "id",
        postgresql_where=text("status = 'pending' AND concurrency_key IS NOT NULL"),
        sqlite_where=text("status = 'pending' AND concurrency_key IS NOT NULL"),
    ),
    Index(
        "ix_krolik_tasks_pending_priority",
        "queue",
        "priority",
        postgresql_where=text("status = 'pending' AND priority > 0"),
        sqlite_where=text("status = 'pending' AND priority > 0"),
    ),
    Index(
        "ix_krolik_tasks_processing_queue_key",
        "queue",
        "concurrency_key",
        postgresql_where=text("status = 'processing'"),
        sqlite_where=text("status = 'processing'"),
    ),
)

queues = Table(
    "krolik_queues",
    metadata,
    # A queue's gates, data changeable at run time: a queue with a row here that is
    # paused or has a limit is claimed through them (krolik/store/sql/flow.py).
    Column("name", Text, primary_key=True),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("max_running", Integer, nullable=True),
    Column("max_running_per_key", Integer, nullable=True),
    # In the ``limits`` notation ("60/minute"): at most that many starts in any window.
    Column("rate_limit", Text, nullable=True),
    # The same limit as numbers (written with it), for the claim that counts in SQL.
    Column("rate_amount", Integer, nullable=True),
    Column("rate_window_seconds", Float, nullable=True),
    # A queue with a limit per key walks its keys round: the last key that got a start.
    Column("key_cursor", Text, nullable=True),
    # The priority of the queue's new tasks that give none (and whose handler names
    # none): a queue of urgent work outranks the others without each submit saying so.
    Column("default_priority", Integer, nullable=True),
    # True while the limits are those the settings gave (APP__FLOW__QUEUES): a worker's
    # start writes them again; a change through the API takes them over.
    Column("declared", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", Timestamp, nullable=False),
    CheckConstraint("max_running IS NULL OR max_running >= 0", name="max_running"),
    CheckConstraint(
        "max_running_per_key IS NULL OR max_running_per_key >= 1", name="max_running_per_key"
    ),
)

handlers = Table(
    "krolik_handlers",
    metadata,
    # What a handler's code declares for its new tasks (``@task(priority=...)``),
    # written by each worker that has it at start: the API, which has no handlers,
    # reads it in the statement that inserts a task.
    Column("name", Text, primary_key=True),
    Column("priority", Integer, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
)

queue_starts = Table(
    "krolik_queue_starts",
    metadata,
    # A rate-limited queue's starts, counted per slice of its window (a sixtieth): a
    # claim counts every slice that overlaps the window, so no window ever holds more
    # than the limit (a slice half out of it still counts whole); older slices are
    # deleted by the claims that count them.
    Column("queue", Text, ForeignKey("krolik_queues.name", ondelete="CASCADE"), primary_key=True),
    Column("slice_at", Timestamp, primary_key=True),
    Column("starts", Integer, nullable=False),
)

outbox = Table(
    "krolik_outbox",
    metadata,
    Column("id", Id, Identity(), primary_key=True),
    Column(
        "task_id",
        Id,
        ForeignKey(tasks.c.id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("queue", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("available_at", Timestamp, nullable=False),
    Column("claimed_until", Timestamp, nullable=True),
    Index("ix_krolik_outbox_available_at", "available_at"),
    Index("ix_krolik_outbox_task_id", "task_id"),
    # Rows come and go all the time; a relay deletes the rows it published by id, so
    # an id must never name a newer row. SQLite reuses the highest ids once their rows
    # are deleted unless told otherwise (PostgreSQL's identity never does).
    sqlite_autoincrement=True,
)

attempts = Table(
    "krolik_attempts",
    metadata,
    # One row per ended run of a task, written in the statement (or transaction) that
    # ends the run, so the history is exactly what the guarded transitions did.
    Column("id", Id, Identity(), primary_key=True),
    Column("task_id", Id, ForeignKey(tasks.c.id, ondelete="CASCADE"), nullable=False),
    Column("run_token", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", Text, nullable=True),
    Column("started_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    # When the task was due again after this run, for runs after which it waited.
    Column("retry_at", Timestamp, nullable=True),
    CheckConstraint(f"outcome IN ({_outcome_list})", name="outcome"),
    Index("ix_krolik_attempts_task_id_run_token", "task_id", "run_token"),
)

deliveries = Table(
    "krolik_deliveries",
    metadata,
    # One row per end of a task that names a webhook_url, written by the trigger
    # krolik_tasks_webhook (migration 0007) in the very statement that ends the task, so
    # no path to a final state can forget it and no crash can lose it: the outbox of
    # webhooks. A sender claims due rows (``claimed_until``, SKIP LOCKED), POSTs, and
    # records the answer guarded by ``attempts``, which each claim counts up.
    Column("id", Id, Identity(), primary_key=True),
    Column("task_id", Id, ForeignKey(tasks.c.id, ondelete="CASCADE"), nullable=False),
    Column("run_token", BigInteger, nullable=False),
    Column("url", Text, nullable=False),
    Column("task_status", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("created_at", Timestamp, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("claimed_until", Timestamp, nullable=True),
    Column("last_attempt_at", Timestamp, nullable=True),
    Column("delivered_at", Timestamp, nullable=True),
    # The last attempt's answer: its HTTP status (None: no answer), why it failed, and
    # how long it took.
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("seconds", Float, nullable=True),
    CheckConstraint(f"state IN ({_delivery_state_list})", name="state"),
    Index("ix_krolik_deliveries_task_id", "task_id"),
    Index(
        "ix_krolik_deliveries_pending_next_attempt_at",
        "next_attempt_at",
        postgresql_where=text("state = 'pending'"),
        sqlite_where=text("state = 'pending'"),
    ),
    sqlite_autoincrement=True,
)

schedules = Table(
    "krolik_schedules",
    metadata,
    # A timetable of tasks: declared in code (a handler's ``@task(cron=...)``, written here
    # when a worker starts) or through the API. ``next_run_at`` is its next tick; a
    # scheduler that finds it due locks the row (SKIP LOCKED), makes the due ticks' tasks
    # and moves it on, in one transaction.
    Column("name", Text, primary_key=True),
    Column("source", Text, nullable=False),
    Column("cron", Text, nullable=True),
    Column("every_seconds", Float, nullable=True),
    Column("tz", Text, nullable=False),
    # The task each tick makes, as the body of POST /tasks/ would give it.
    Column("task", JsonValue, nullable=False),
    Column("catch_up", Text, nullable=False),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("next_run_at", Timestamp, nullable=False),
    Column("last_run_at", Timestamp, nullable=True),
    Column("last_task_id", Id, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    CheckConstraint("source IN ('code', 'api')", name="source"),
    CheckConstraint("catch_up IN ('skip', 'once', 'all')", name="catch_up"),
    CheckConstraint("(cron IS NULL) <> (every_seconds IS NULL)", name="timing"),
    Index(
        "ix_krolik_schedules_next_run_at",
        "next_run_at",
        postgresql_where=text("NOT paused"),
        sqlite_where=text("NOT paused"),
    ),
)

schedule_ticks = Table(
    "krolik_schedule_ticks",
    metadata,
    # One row per tick that made a task: its key is the schedule and the tick's time, so
    # a second scheduler (or a second try of the same one) cannot make that tick again.
    # It goes with its task (retention) or its schedule.
    Column(
        "schedule",
        Text,
        ForeignKey(schedules.c.name, ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("tick_at", Timestamp, primary_key=True),
    Column("task_id", Id, ForeignKey(tasks.c.id, ondelete="CASCADE"), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_krolik_schedule_ticks_task_id", "task_id"),
)

api_keys = Table(
    "krolik_api_keys",
    metadata,
    Column("id", Id, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("key_hash", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp, nullable=True),
    CheckConstraint("scope IN ('read', 'submit', 'admin')", name="scope"),
    Index("ix_krolik_api_keys_name", "name", unique=True),
    Index("ix_krolik_api_keys_key_hash", "key_hash", unique=True),
)

workers = Table(
    "krolik_workers",
    metadata,
    # A worker process while it lives: what it serves, and until when it counts as alive
    # (each heartbeat moves ``expires_at`` on; a clean stop deletes the row).
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", JsonValue, nullable=False),
    Column("handlers", JsonValue, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("running", Integer, nullable=False, server_default=text("0")),
    Column("started_at", Timestamp, nullable=False),
    Column("last_seen_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)
