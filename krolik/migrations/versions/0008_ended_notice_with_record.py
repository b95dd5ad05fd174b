"""the ended notice carries the task's record

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 22:00:00.000000

PostgreSQL's ``NOTIFY krolik_task_ended`` (the trigger ``krolik_tasks_ended`` of 0007)
sends the ended task's record as JSON instead of its id alone: an API process answers
its waiters from the notice, without reading the task again. A record too big for a
notice (their limit is 8,000 bytes) still goes as the id, and the waiters read it.
Nothing changes on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH_RECORD = """
CREATE OR REPLACE FUNCTION krolik_task_ended_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body text := row_to_json(NEW)::text;
BEGIN
    IF octet_length(body) > 7900 THEN
        body := NEW.id::text;
    END IF;
    PERFORM pg_notify('krolik_task_ended', body);
    RETURN NULL;
END
$$
"""
ID_ONLY = """
CREATE OR REPLACE FUNCTION krolik_task_ended_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('krolik_task_ended', NEW.id::text);
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(WITH_RECORD)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(ID_ONLY)
