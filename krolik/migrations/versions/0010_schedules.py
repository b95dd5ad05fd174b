"""schedules

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 12:00:00.000000

* ``krolik_schedules``: timetables of tasks (cron in a time zone, or every N seconds),
  from code or from the API, with their next and last run.
* ``krolik_schedule_ticks``: one row per tick that made a task, keyed by schedule and
  tick time: the database itself refuses a second task for a tick.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JsonValue = sa.JSON().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "krolik_schedules",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("cron", sa.Text(), nullable=True),
        sa.Column("every_seconds", sa.Float(), nullable=True),
        sa.Column("tz", sa.Text(), nullable=False),
        sa.Column("task", JsonValue, nullable=False),
        sa.Column("catch_up", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("next_run_at", Timestamp, nullable=False),
        sa.Column("last_run_at", Timestamp, nullable=True),
        sa.Column("last_task_id", Id, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint("source IN ('code', 'api')", name=op.f("ck_krolik_schedules_source")),
        sa.CheckConstraint(
            "catch_up IN ('skip', 'once', 'all')", name=op.f("ck_krolik_schedules_catch_up")
        ),
        sa.CheckConstraint(
            "(cron IS NULL) <> (every_seconds IS NULL)", name=op.f("ck_krolik_schedules_timing")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_krolik_schedules")),
    )
    op.create_index(
        "ix_krolik_schedules_next_run_at",
        "krolik_schedules",
        ["next_run_at"],
        postgresql_where=sa.text("NOT paused"),
        sqlite_where=sa.text("NOT paused"),
    )
    op.create_table(
        "krolik_schedule_ticks",
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("tick_at", Timestamp, nullable=False),
        sa.Column("task_id", Id, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["schedule"],
            ["krolik_schedules.name"],
            name=op.f("fk_krolik_schedule_ticks_schedule_krolik_schedules"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["krolik_tasks.id"],
            name=op.f("fk_krolik_schedule_ticks_task_id_krolik_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("schedule", "tick_at", name=op.f("pk_krolik_schedule_ticks")),
    )
    op.create_index("ix_krolik_schedule_ticks_task_id", "krolik_schedule_ticks", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_krolik_schedule_ticks_task_id", table_name="krolik_schedule_ticks")
    op.drop_table("krolik_schedule_ticks")
    op.drop_index("ix_krolik_schedules_next_run_at", table_name="krolik_schedules")
    op.drop_table("krolik_schedules")
