"""``krolik migrate`` on a brand-new, empty database."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, pg_url
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e


async def test_migrate_on_an_empty_database_twice(pg_database: str, tmp_path: Path) -> None:
    name = f"krolik_e2e_migrate_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        cluster = Cluster(env={"APP__DB__URL": pg_url(name)}, log_dir=tmp_path)
        try:
            for run in (1, 2):
                proc = await cluster.run(f"migrate-{run}", "migrate", timeout=60)
                assert proc.popen.returncode == 0, proc.tail()
        finally:
            cluster.kill_all()
        migrated = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=name)
        try:
            tables = {
                row["tablename"]
                for row in await migrated.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            versions = await migrated.fetch("SELECT version_num FROM alembic_version")
        finally:
            await migrated.close()
        assert {"krolik_tasks", "krolik_outbox", "alembic_version"} <= tables
        assert len(versions) == 1
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
