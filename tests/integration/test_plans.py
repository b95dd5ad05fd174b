"""The time conditions of the hot statements are index conditions, not filters.

``clock_timestamp()`` changes from row to row, so PostgreSQL cannot use it to bound an
index scan: a claim compared with it walks every entry of the index (a million
scheduled tasks: a million entries, twice a second per relay) and filters them. The
statements compare with ``now()``, one value per statement. Sequential scans are
switched off so that the planner's choice of index shows on tiny tables too.
"""

from __future__ import annotations

from typing import Any

import pytest

from krolik.store.postgres import (
    CLAIM_MANY_SQL,
    CLAIM_OUTBOX_SQL,
    COMPLETE_MANY_SQL,
    PostgresTaskStore,
)

pytestmark = pytest.mark.integration


async def plan(store: PostgresTaskStore, sql: str, *args: Any) -> str:
    async with store.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        async with driver.transaction():
            await driver.execute("SET LOCAL enable_seqscan = off")
            rows = await driver.fetch(f"EXPLAIN {sql}", *args)  # plans, runs nothing
        return "\n".join(row[0] for row in rows)


async def test_the_outbox_claim_bounds_its_index_scan_by_time(store: PostgresTaskStore) -> None:
    shown = await plan(store, CLAIM_OUTBOX_SQL, 200, 30.0, [])
    assert "Index Cond: (available_at <= now())" in shown, shown


# -- claims and completions go to their rows by id, whatever the planner knows --------
YOUNG_TABLE = [
    # A table autovacuum has not analyzed yet (every new deployment, its first minute or
    # so; every benchmark run): no column statistics, no row count.
    "DELETE FROM pg_statistic WHERE starelid = 'krolik_tasks'::regclass",
    "UPDATE pg_class SET reltuples = -1 WHERE oid = 'krolik_tasks'::regclass",
]
BACKLOG = """
INSERT INTO krolik_tasks (name, queue, status, run_at, created_at, updated_at)
SELECT 'echo', 'default', CASE WHEN n % 4 = 0 THEN 'pending' ELSE 'done' END,
       CASE WHEN n % 4 = 0 THEN now() + interval '1 hour' ELSE now() END, now(), now()
FROM generate_series(1, 20000) AS n
"""
"""Finished tasks of one name, and a quarter of them scheduled for later."""


SMALL_BACKLOG = [
    # A young table of 5,000 pending tasks: a full scan looks as cheap as 30 probes of
    # the primary key to a planner that knows nothing of the rows.
    "INSERT INTO krolik_tasks (name, queue, status, run_at, created_at, updated_at)"
    " SELECT 'echo', 'default', 'pending', now(), now(), now() FROM generate_series(1, 5000)",
    *YOUNG_TABLE,
]


async def young_table_plan(
    store: PostgresTaskStore, sql: str, *args: Any, before: list[str] = YOUNG_TABLE
) -> str:
    """The plan on a young table holding a backlog, undone after (a rolled-back
    transaction: the catalogs and rows as they were)."""
    async with store.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        transaction = driver.transaction()
        await transaction.start()
        try:
            if before is YOUNG_TABLE:
                await driver.execute(BACKLOG)
            for statement in before:
                await driver.execute(statement)
            rows = await driver.fetch(f"EXPLAIN {sql}", *args)
        finally:
            await transaction.rollback()
        return "\n".join(row[0] for row in rows)


BY_ID = "->  Index Scan using pk_krolik_tasks on krolik_tasks t"
BY_IDS = "->  Bitmap Heap Scan on krolik_tasks t"
"""Also by id: the bitmap of the primary key's entries for the ids (asserted apart)."""
OUTRANKED = "->  Index Scan using ix_krolik_tasks_pending_priority on krolik_tasks p"
"""The claim's probe for a task of higher priority due in the queue: an index holding only
pending tasks above priority 0 (empty while no task has a priority)."""


def scans_of_tasks(plan_text: str) -> list[str]:
    """The nodes that read krolik_tasks (by index, bitmap or in full), without costs."""
    return [
        line.strip().split("  (")[0]
        for line in plan_text.splitlines()
        if " on krolik_tasks " in line and "Scan" in line
    ]


async def test_a_claim_reads_its_tasks_by_id_on_a_young_table(store: PostgresTaskStore) -> None:
    ids = list(range(1, 31))
    shown = await young_table_plan(store, CLAIM_MANY_SQL, ids, "w", 30.0, ["echo"], [1])
    # Not by name (every task of it) nor by the pending index (every row version that
    # was pending since the last vacuum): the planner knows none of that yet.
    assert_by_id(shown)


async def test_a_claim_reads_its_tasks_by_id_on_a_young_table_of_a_few_thousand(
    store: PostgresTaskStore,
) -> None:
    ids = list(range(1, 31))
    shown = await young_table_plan(
        store, CLAIM_MANY_SQL, ids, "w", 30.0, ["echo"], [1], before=SMALL_BACKLOG
    )
    # Read in full, it may be (the planner finds that as cheap); but each row is tested
    # against the ids at the scan, not against every id named through a join (12 ms a
    # claim at 5,000 tasks, 0.5 ms so).
    scan = shown.split("Scan on krolik_tasks t ", 1)[1].split("->", 1)[0]
    assert "(id = ANY (" in scan, shown


def assert_by_id(shown: str) -> None:
    scans = scans_of_tasks(shown)
    assert scans[1:] == [OUTRANKED], shown
    assert scans[0] == BY_ID or (
        scans[0] == BY_IDS and "Bitmap Index Scan on pk_krolik_tasks" in shown
    ), shown


async def test_a_completion_reads_its_tasks_by_id_on_a_young_table(
    store: PostgresTaskStore,
) -> None:
    ids = list(range(1, 31))
    shown = await young_table_plan(store, COMPLETE_MANY_SQL, ids, [1] * 30, ["null"] * 30)
    assert scans_of_tasks(shown) == [BY_ID], shown


# -- the gated claim's functions go to their rows by id too ------------------------------
GATED_BACKLOG = [
    # A capped queue with a backlog of 5,000 pending tasks, 100 of them held, on a young
    # table: each statement of the functions that names tasks by id must read those rows,
    # not every pending one (that cost grew with the backlog, under the queue's lock).
    "INSERT INTO krolik_queues (name, max_running, updated_at) VALUES ('default', 5, now())",
    "INSERT INTO krolik_tasks (name, queue, status, run_at, held, created_at, updated_at)"
    " SELECT 'echo', 'default', 'pending', now() - interval '1 second',"
    " CASE WHEN n <= 100 THEN 'max_running' END, now(), now()"
    " FROM generate_series(1, 5000) AS n",
    *YOUNG_TABLE,
]
ANALYZED = [*GATED_BACKLOG[: -len(YOUNG_TABLE)], "ANALYZE krolik_tasks"]
"""The same backlog on a table whose statistics know it."""
TABLES = {"young": GATED_BACKLOG, "analyzed": ANALYZED}
EXPLAINED = [
    "LOAD 'auto_explain'",
    "SET LOCAL auto_explain.log_min_duration = 0",
    "SET LOCAL auto_explain.log_nested_statements = on",
    "SET LOCAL auto_explain.log_analyze = on",
    "SET LOCAL auto_explain.log_level = 'notice'",
]
"""Every statement the functions run, with its plan as run, sent back as a notice."""


async def nested_plans(store: PostgresTaskStore, table: str, sql: str, *args: Any) -> list[str]:
    """The plans of the statements ``sql`` runs inside its functions, on the gated backlog
    (rolled back after)."""
    notices: list[str] = []
    async with store.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        driver.add_log_listener(lambda _, message: notices.append(str(message)))
        transaction = driver.transaction()
        await transaction.start()
        try:
            for statement in TABLES[table] + EXPLAINED:
                await driver.execute(statement)
            await driver.fetch(sql, *args)
        finally:
            await transaction.rollback()
    return notices


def filtering(plans: list[str], most: int = 100) -> list[str]:
    """The plans of statements that read more than ``most`` rows they then filtered out
    (at a scan, or at a join: the tasks read first and matched to the ids after)."""
    return [
        text
        for text in plans
        if any(
            int(line.rsplit(":", 1)[1]) > most
            for line in text.splitlines()
            if "Rows Removed by Filter:" in line or "Rows Removed by Join Filter:" in line
        )
    ]


@pytest.mark.parametrize("table", sorted(TABLES))
async def test_a_gated_claim_reads_the_tasks_named_by_id(
    store: PostgresTaskStore, table: str
) -> None:
    ids = list(range(4000, 4010))  # pending, not held, named by a message
    plans = await nested_plans(
        store,
        table,
        "SELECT * FROM krolik_claim_gated($1::bigint[], 'w', 30, '{echo}', '{3}')",
        ids,
    )
    assert len(plans) > 5, plans  # the functions' statements were explained
    assert filtering(plans) == []


@pytest.mark.parametrize("table", sorted(TABLES))
async def test_a_claim_of_held_tasks_reads_no_pending_task_it_does_not_take(
    store: PostgresTaskStore, table: str
) -> None:
    plans = await nested_plans(
        store, table, "SELECT * FROM krolik_claim_held('default', 1, 'w', 30, '{echo}', '{3}')"
    )
    assert len(plans) > 5, plans
    assert filtering(plans) == []
