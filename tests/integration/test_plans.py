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

from krolik.store.postgres import CLAIM_OUTBOX_SQL, PostgresTaskStore

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
