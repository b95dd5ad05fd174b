"""snooze and expiry

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 11:00:00.000000

* ``krolik_tasks.expires_at``: a task not started by then ends ``expired`` (a new final
  status) and never runs; a partial index finds the pending ones that are overdue.
* the attempt outcome ``snoozed``: a handler asked to run again later.
* the webhook and ended triggers fire for ``expired`` too.

SQLite cannot change a CHECK constraint in place: ``krolik_tasks`` and ``krolik_attempts``
are rebuilt (batch mode), and the webhook trigger, which goes with the old table, is
written again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'pending', 'processing', 'done', 'failed', 'cancelled'"
OUTCOMES = "'succeeded', 'failed', 'retried', 'cancelled', 'released', 'lost'"
FINAL = "'done', 'failed', 'cancelled'"
COLUMNS = "task_id, run_token, url, task_status, state, attempts, created_at, next_attempt_at"
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
PENDING_OVERDUE = "status = 'pending' AND expires_at IS NOT NULL"


def _postgres_triggers(final: str) -> list[str]:
    return [
        "DROP TRIGGER krolik_tasks_webhook ON krolik_tasks",
        f"""CREATE TRIGGER krolik_tasks_webhook AFTER UPDATE OF status ON krolik_tasks
        FOR EACH ROW
        WHEN (NEW.webhook_url IS NOT NULL AND NEW.status IN ({final})
              AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION krolik_task_ended_webhook()""",
        "DROP TRIGGER krolik_tasks_ended ON krolik_tasks",
        f"""CREATE TRIGGER krolik_tasks_ended AFTER UPDATE OF status ON krolik_tasks
        FOR EACH ROW
        WHEN (NEW.status IN ({final}) AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION krolik_task_ended_notify()""",
    ]


def _sqlite_trigger(final: str) -> list[str]:
    return [
        "DROP TRIGGER IF EXISTS krolik_tasks_webhook",
        f"""CREATE TRIGGER krolik_tasks_webhook AFTER UPDATE OF status ON krolik_tasks
        FOR EACH ROW
        WHEN NEW.webhook_url IS NOT NULL AND NEW.status IN ({final})
             AND OLD.status IS NOT NEW.status
        BEGIN
            INSERT INTO krolik_deliveries ({COLUMNS})
            VALUES (NEW.id, NEW.run_token, NEW.webhook_url, NEW.status, 'pending', 0,
                    {SQLITE_NOW}, {SQLITE_NOW});
        END""",
    ]


def _checks(statuses: str, outcomes: str) -> None:
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.drop_constraint(op.f("ck_krolik_tasks_status"), type_="check")
        batch.create_check_constraint(op.f("ck_krolik_tasks_status"), f"status IN ({statuses})")
    with op.batch_alter_table("krolik_attempts") as batch:
        batch.drop_constraint(op.f("ck_krolik_attempts_outcome"), type_="check")
        batch.create_check_constraint(
            op.f("ck_krolik_attempts_outcome"), f"outcome IN ({outcomes})"
        )


def _triggers(final: str) -> None:
    postgres = op.get_context().dialect.name == "postgresql"
    for statement in _postgres_triggers(final) if postgres else _sqlite_trigger(final):
        op.execute(statement)


def upgrade() -> None:
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    _checks(f"{STATUSES}, 'expired'", f"{OUTCOMES}, 'snoozed'")
    op.create_index(
        "ix_krolik_tasks_pending_expires_at",
        "krolik_tasks",
        ["expires_at"],
        postgresql_where=sa.text(PENDING_OVERDUE),
        sqlite_where=sa.text(PENDING_OVERDUE),
    )
    _triggers(f"{FINAL}, 'expired'")


def downgrade() -> None:
    op.execute("DELETE FROM krolik_attempts WHERE outcome = 'snoozed'")
    op.execute("UPDATE krolik_tasks SET status = 'cancelled' WHERE status = 'expired'")
    op.drop_index("ix_krolik_tasks_pending_expires_at", table_name="krolik_tasks")
    _checks(STATUSES, OUTCOMES)
    with op.batch_alter_table("krolik_tasks") as batch:
        batch.drop_column("expires_at")
    _triggers(FINAL)
