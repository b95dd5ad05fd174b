"""the gated claim reads its tasks by id

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 19:00:00.000000

The functions of 0013 again, each statement that names tasks by id now reading them by
the primary key. With ``status = 'pending'`` beside ``id = ANY(array)``, their generic
plans read them through the index of pending tasks by run time and filtered: every
pending task of the table read by each claim, under the queue's lock (5,000 rows at a
backlog of 5,000; the cost grew with the backlog). A join of the ids (``unnest``) was
no cure: with the table's statistics the planner drove it from the pending tasks. The
refused tasks' hold and the dispatch of those not held are one statement, the second
reading the rows the first wrote.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMABLE = """t.status = 'pending' AND t.run_at <= now()
              AND (t.expires_at IS NULL OR t.expires_at > now()) AND t.name = ANY(p_names)"""
CLAIMABLE_BY_ID = """t.status IS NOT DISTINCT FROM 'pending' AND t.run_at <= now()
              AND (t.expires_at IS NULL OR t.expires_at > now()) AND t.name = ANY(p_names)"""
"""What a statement that names its tasks by id asks of them: the status compared so that
no partial index of pending tasks matches (``IS NOT DISTINCT FROM`` implies nothing to
the planner), and the rows are read by the primary key (``id = ANY``) whatever the
statistics say, as ``CLAIM_MANY_SQL`` reads them."""

CLAIM_IN_QUEUE = f"""
CREATE OR REPLACE FUNCTION krolik_claim_in_queue(
    p_queue text, p_named bigint[], p_wanted integer, p_worker text, p_lease float8,
    p_names text[], p_defaults integer[]
) RETURNS SETOF krolik_tasks LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    g krolik_queues%ROWTYPE;
    room integer;
    had_room boolean;
    bound text;
    n bigint;
    chosen bigint[];
    claimed integer := 0;
    want bigint;
    walked text[] := '{{}}';
    after text;
    step text;
    wrapped boolean := false;
BEGIN
    IF cardinality(p_named) > 0 THEN
        -- A queue evidently shut (paused, or its cap full as far as this snapshot sees)
        -- holds the named tasks without waiting for the lock: a backlog's messages do
        -- not queue up behind it. A slot freed meanwhile is taken by the run that freed
        -- it, or woken by the waker.
        SELECT * INTO g FROM krolik_queues WHERE name = p_queue;
        IF g.paused THEN
            bound := 'paused';
        ELSIF g.max_running IS NOT NULL AND (
            SELECT count(*) FROM krolik_tasks WHERE queue = p_queue AND status = 'processing'
        ) >= g.max_running THEN
            bound := 'max_running';
        END IF;
        IF bound IS NOT NULL THEN
            UPDATE krolik_tasks t SET held = bound
            WHERE t.id = ANY(p_named) AND t.status IS NOT DISTINCT FROM 'pending';
            RETURN;
        END IF;
    END IF;
    -- The queue's row lock: two claims of the queue never count the same free slot.
    SELECT * INTO g FROM krolik_queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR NOT (g.paused OR g.max_running IS NOT NULL
                         OR g.max_running_per_key IS NOT NULL OR g.rate_limit IS NOT NULL) THEN
        -- Not gated (any more): the named tasks as they are, for the caller's plain claim.
        RETURN QUERY SELECT * FROM krolik_tasks t
            WHERE t.id = ANY(p_named) AND t.status IS NOT DISTINCT FROM 'pending';
        RETURN;
    END IF;
    room := coalesce(p_wanted, cardinality(p_named));
    IF g.paused THEN
        room := 0;
        bound := 'paused';
    END IF;
    IF room > 0 AND g.max_running IS NOT NULL THEN
        SELECT count(*) INTO n FROM krolik_tasks
        WHERE queue = p_queue AND status = 'processing';
        IF g.max_running - n < room THEN
            room := greatest(0, g.max_running - n);
            bound := 'max_running';
        END IF;
    END IF;
    IF room > 0 AND g.rate_amount IS NOT NULL THEN
        -- A slice that overlaps the window counts whole (a sixtieth of it, see flow.py).
        DELETE FROM krolik_queue_starts
        WHERE queue = p_queue
          AND slice_at <= now() - make_interval(secs => g.rate_window_seconds * 61 / 60);
        SELECT coalesce(sum(starts), 0) INTO n FROM krolik_queue_starts WHERE queue = p_queue;
        IF g.rate_amount - n < room THEN
            room := greatest(0, g.rate_amount - n);
            bound := 'rate_limit';
        END IF;
    END IF;
    had_room := room > 0;
    IF had_room AND g.max_running_per_key IS NOT NULL THEN
        -- The keys with pending tasks, walked round from the one served last: a key
        -- whose messages are queued behind another's backlog is reached all the same.
        SELECT room + count(*) INTO want FROM (
            SELECT 1 FROM krolik_tasks r
            WHERE r.queue = p_queue AND r.status = 'processing' AND r.concurrency_key IS NOT NULL
            GROUP BY r.concurrency_key HAVING count(*) >= g.max_running_per_key
        ) f;
        after := g.key_cursor;
        LOOP
            EXIT WHEN cardinality(walked) >= want;
            SELECT t.concurrency_key INTO step FROM krolik_tasks t
            WHERE t.queue = p_queue AND t.status = 'pending' AND t.concurrency_key IS NOT NULL
              AND (after IS NULL OR t.concurrency_key > after)
            ORDER BY t.concurrency_key LIMIT 1;
            IF NOT FOUND THEN
                EXIT WHEN wrapped OR g.key_cursor IS NULL;
                wrapped := true;
                after := NULL;
                CONTINUE;
            END IF;
            EXIT WHEN wrapped AND step > g.key_cursor;
            walked := walked || step;
            after := step;
        END LOOP;
    END IF;
    IF had_room THEN
        -- The best of the named tasks, the held ones and those of the keys walked (read
        -- apart: one condition with OR would read every pending task of the queue),
        -- each key within its room.
        WITH pool AS (
            SELECT t.id, t.concurrency_key, t.priority, t.run_at FROM krolik_tasks t
            WHERE t.id = ANY(p_named) AND {CLAIMABLE_BY_ID}
            UNION
            (SELECT t.id, t.concurrency_key, t.priority, t.run_at FROM krolik_tasks t
             WHERE t.queue = p_queue AND t.held IS NOT NULL AND {CLAIMABLE}
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT room)
            UNION
            SELECT c.id, c.concurrency_key, c.priority, c.run_at
            FROM unnest(walked) AS w(k), LATERAL (
                SELECT t.id, t.concurrency_key, t.priority, t.run_at FROM krolik_tasks t
                WHERE t.queue = p_queue AND t.concurrency_key = w.k AND {CLAIMABLE}
                ORDER BY t.priority DESC, t.run_at, t.id
                LIMIT least(room, g.max_running_per_key)
            ) c
        ), ranked AS (
            SELECT pool.*, row_number() OVER (
                PARTITION BY pool.concurrency_key ORDER BY pool.priority DESC, pool.run_at, pool.id
            ) AS rank
            FROM pool
        ), running AS (
            SELECT r.concurrency_key, count(*) AS n FROM krolik_tasks r
            WHERE g.max_running_per_key IS NOT NULL AND r.queue = p_queue
              AND r.status = 'processing' AND r.concurrency_key IS NOT NULL
            GROUP BY r.concurrency_key
        )
        SELECT array_agg(c.id) INTO chosen FROM (
            SELECT ranked.id FROM ranked
            LEFT JOIN running ON running.concurrency_key = ranked.concurrency_key
            WHERE g.max_running_per_key IS NULL OR ranked.concurrency_key IS NULL
               OR ranked.rank + coalesce(running.n, 0) <= g.max_running_per_key
            ORDER BY ranked.priority DESC, ranked.run_at, ranked.id
            LIMIT room
        ) c;
        RETURN QUERY
        UPDATE krolik_tasks t
        SET status = 'processing',
            attempts = t.attempts + 1,
            run_token = t.run_token + 1,
            max_attempts = coalesce(t.max_attempts, h.default_max),
            worker_id = p_worker,
            lease_expires_at = clock_timestamp() + make_interval(secs => p_lease),
            started_at = clock_timestamp(),
            updated_at = clock_timestamp(),
            progress = NULL,
            held = NULL
        FROM unnest(p_names, p_defaults) AS h(name, default_max)
        WHERE t.id = ANY(chosen) AND t.name = h.name
          AND t.status IS NOT DISTINCT FROM 'pending'
        RETURNING t.*;
        GET DIAGNOSTICS claimed = ROW_COUNT;
        IF cardinality(walked) > 0 THEN
            -- The next walk starts after the last key walked that got a start.
            SELECT w.k INTO step FROM unnest(walked) WITH ORDINALITY AS w(k, i)
            WHERE EXISTS (SELECT 1 FROM krolik_tasks t
                          WHERE t.id = ANY(chosen) AND t.concurrency_key = w.k)
            ORDER BY w.i DESC LIMIT 1;
            IF FOUND THEN
                UPDATE krolik_queues SET key_cursor = step WHERE name = p_queue;
            END IF;
        END IF;
        IF claimed > 0 AND g.rate_amount IS NOT NULL THEN
            INSERT INTO krolik_queue_starts AS s (queue, slice_at, starts)
            VALUES (
                p_queue,
                to_timestamp(floor(extract(epoch FROM now()) / (g.rate_window_seconds / 60))
                             * (g.rate_window_seconds / 60)),
                claimed
            )
            ON CONFLICT (queue, slice_at) DO UPDATE SET starts = s.starts + excluded.starts;
        END IF;
    END IF;
    IF cardinality(p_named) > 0
       AND NOT (p_named <@ coalesce(chosen, '{{}}') AND claimed = cardinality(chosen)) THEN
        -- The named tasks not started are held with their reason (a key at its limit, else
        -- the gate that bound the room); one that only lost its place to better tasks, with
        -- no gate shut, is dispatched again at once instead (unless held already).
        -- (One statement: the dispatch reads the rows the hold just wrote.)
        WITH refused AS (
            UPDATE krolik_tasks t
            SET held = coalesce(CASE
                WHEN had_room AND g.max_running_per_key IS NOT NULL
                     AND t.concurrency_key IS NOT NULL
                     AND (SELECT count(*) FROM krolik_tasks r
                          WHERE r.queue = p_queue AND r.status = 'processing'
                            AND r.concurrency_key = t.concurrency_key) >= g.max_running_per_key
                    THEN 'key_limit'
                ELSE bound END, t.held)
            WHERE t.id = ANY(p_named) AND t.status IS NOT DISTINCT FROM 'pending'
            RETURNING t.id, t.queue, t.name, t.run_at, t.held
        )
        INSERT INTO krolik_outbox (task_id, queue, name, available_at)
        SELECT id, queue, name, run_at FROM refused WHERE held IS NULL;
    END IF;
END
$$
"""

CLAIM_GATED = f"""
CREATE OR REPLACE FUNCTION krolik_claim_gated(
    p_ids bigint[], p_worker text, p_lease float8, p_names text[], p_defaults integer[]
) RETURNS SETOF krolik_tasks LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    q text;
    named bigint[];
BEGIN
    -- Queue by queue, in their order (locks taken in one order never deadlock).
    FOR q, named IN
        SELECT t.queue, array_agg(t.id ORDER BY t.id) FROM krolik_tasks t
        WHERE t.id = ANY(p_ids) AND {CLAIMABLE_BY_ID}
        GROUP BY t.queue ORDER BY t.queue
    LOOP
        RETURN QUERY SELECT * FROM krolik_claim_in_queue(
            q, named, NULL, p_worker, p_lease, p_names, p_defaults);
    END LOOP;
END
$$
"""

CLAIM_HELD = """
CREATE OR REPLACE FUNCTION krolik_claim_held(
    p_queue text, p_most integer, p_worker text, p_lease float8, p_names text[],
    p_defaults integer[]
) RETURNS SETOF krolik_tasks LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    -- Read without the lock, through the index of held tasks: the common answer, none,
    -- costs no lock.
    IF NOT EXISTS (SELECT 1 FROM krolik_tasks
                   WHERE queue = p_queue AND status = 'pending' AND held IS NOT NULL) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM krolik_claim_in_queue(
        p_queue, '{}', p_most, p_worker, p_lease, p_names, p_defaults);
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in (CLAIM_IN_QUEUE, CLAIM_GATED, CLAIM_HELD):
            op.execute(function)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    path = Path(__file__).with_name("0013_gated_claim_in_one_statement.py")
    spec = importlib.util.spec_from_file_location("krolik_migration_0013", path)
    assert spec is not None
    assert spec.loader is not None
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    for function in (before.CLAIM_IN_QUEUE, before.CLAIM_GATED, before.CLAIM_HELD):
        op.execute(function)
