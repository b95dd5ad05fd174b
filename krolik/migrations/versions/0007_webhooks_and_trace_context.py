"""webhooks and trace context

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 13:00:00.000000

* ``krolik_tasks.webhook_url``: where to POST the task's record when it ends.
* ``krolik_tasks.traceparent``: the W3C trace context the task was submitted in.
* ``krolik_deliveries``: the outbox of webhooks, one row per end of such a task.
* the trigger ``krolik_tasks_webhook``: writes that row in the statement that moves the
  task to a final state (done, failed, cancelled), whichever path it takes (a worker's
  completion, a rescue out of attempts, a cancel), so none can forget it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FINAL = "('done', 'failed', 'cancelled')"
COLUMNS = "task_id, run_token, url, task_status, state, attempts, created_at, next_attempt_at"

POSTGRES_FUNCTION = f"""
CREATE FUNCTION krolik_task_ended_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO krolik_deliveries ({COLUMNS})
    VALUES (NEW.id, NEW.run_token, NEW.webhook_url, NEW.status, 'pending', 0,
            clock_timestamp(), clock_timestamp());
    RETURN NULL;
END
$$
"""
POSTGRES_TRIGGER = f"""
CREATE TRIGGER krolik_tasks_webhook AFTER UPDATE OF status ON krolik_tasks
FOR EACH ROW
WHEN (NEW.webhook_url IS NOT NULL AND NEW.status IN {FINAL}
      AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION krolik_task_ended_webhook()
"""
# PostgreSQL also says, at commit, which task ended: an API process listening wakes its
# waiters without the worker's notice through RabbitMQ (one hop, not three).
POSTGRES_ENDED_FUNCTION = """
CREATE FUNCTION krolik_task_ended_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('krolik_task_ended', NEW.id::text);
    RETURN NULL;
END
$$
"""
POSTGRES_ENDED_TRIGGER = f"""
CREATE TRIGGER krolik_tasks_ended AFTER UPDATE OF status ON krolik_tasks
FOR EACH ROW
WHEN (NEW.status IN {FINAL} AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION krolik_task_ended_notify()
"""
# SQLite: the time in SQLAlchemy's storage format ('YYYY-MM-DD HH:MM:SS.ffffff', UTC),
# so it sorts and reads back as the times the store writes.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
SQLITE_TRIGGER = f"""
CREATE TRIGGER krolik_tasks_webhook AFTER UPDATE OF status ON krolik_tasks
FOR EACH ROW
WHEN NEW.webhook_url IS NOT NULL AND NEW.status IN {FINAL} AND OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO krolik_deliveries ({COLUMNS})
    VALUES (NEW.id, NEW.run_token, NEW.webhook_url, NEW.status, 'pending', 0,
            {SQLITE_NOW}, {SQLITE_NOW});
END
"""


def upgrade() -> None:
    op.add_column("krolik_tasks", sa.Column("webhook_url", sa.Text(), nullable=True))
    op.add_column("krolik_tasks", sa.Column("traceparent", sa.Text(), nullable=True))
    op.create_table(
        "krolik_deliveries",
        sa.Column("id", Id, sa.Identity(always=False), nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("run_token", sa.BigInteger(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("task_status", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_krolik_deliveries_state"),
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["krolik_tasks.id"],
            name=op.f("fk_krolik_deliveries_task_id_krolik_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_krolik_deliveries")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_krolik_deliveries_task_id", "krolik_deliveries", ["task_id"])
    op.create_index(
        "ix_krolik_deliveries_pending_next_attempt_at",
        "krolik_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
        op.execute(POSTGRES_ENDED_FUNCTION)
        op.execute(POSTGRES_ENDED_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS krolik_tasks_webhook"
        + (" ON krolik_tasks" if op.get_context().dialect.name == "postgresql" else "")
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS krolik_tasks_ended ON krolik_tasks")
        op.execute("DROP FUNCTION IF EXISTS krolik_task_ended_notify()")
        op.execute("DROP FUNCTION IF EXISTS krolik_task_ended_webhook()")
    op.drop_index("ix_krolik_deliveries_pending_next_attempt_at", table_name="krolik_deliveries")
    op.drop_index("ix_krolik_deliveries_task_id", table_name="krolik_deliveries")
    op.drop_table("krolik_deliveries")
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.drop_column("traceparent")
        batch.drop_column("webhook_url")
