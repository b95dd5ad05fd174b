"""Cluster fixtures: three real RabbitMQ nodes (once per session), a PostgreSQL pair (per test).

The clusters run on their own loopback ports (``tests/support/clusters``) and are wiped
at the end, unless ``KROLIK_TEST_KEEP_CLUSTERS`` is set: then the next session finds them
up and starts in seconds instead of a minute. Krolik processes go through ``cluster``,
as in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from krolik.migrate import upgrade_async
from krolik.settings import Settings
from tests.conftest import service_missing, test_settings
from tests.e2e.conftest import (  # noqa: F401  (the report hook attaches process logs)
    E2E_TIMINGS,
    Cluster,
    pytest_runtest_makereport,
    settings_env,
)
from tests.support.clusters import PostgresPair, RabbitCluster

CLUSTER_BASE = Path(
    os.environ.get("KROLIK_TEST_CLUSTER_BASE", Path(tempfile.gettempdir()) / "krolik-test-clusters")
)
KEEP = bool(os.environ.get("KROLIK_TEST_KEEP_CLUSTERS"))


@pytest.fixture(scope="session")
def rabbit_nodes() -> Iterator[RabbitCluster]:
    if not RabbitCluster.available():
        service_missing("RabbitMQ's server (Debian's rabbitmq-server) is not installed")
    nodes = RabbitCluster(
        base=CLUSTER_BASE / "rmq", port0=int(os.environ.get("KROLIK_TEST_RMQ_PORT0", "5673"))
    )
    nodes.start()
    try:
        yield nodes
    finally:
        if not KEEP:
            nodes.wipe()


@pytest.fixture
def settings(pg_database: str, rabbit_nodes: RabbitCluster, run_id: str) -> Settings:
    """The machine's PostgreSQL, the three RabbitMQ nodes, quorum queues."""
    return test_settings(
        pg_database,
        run_id,
        rabbitmq={
            "url": rabbit_nodes.urls(),
            "queue_type": "quorum",
            "shuffle_nodes": False,
            "heartbeat_seconds": 2,
        },
    )


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    processes = Cluster(env=settings_env(settings) | E2E_TIMINGS, log_dir=tmp_path)
    try:
        yield processes
    finally:
        processes.kill_all()


@pytest.fixture
async def pair() -> AsyncIterator[PostgresPair]:
    """A fresh primary and replica for each test (a failover leaves the old primary
    behind, which must not rejoin as a primary)."""
    if not PostgresPair.available():
        service_missing("PostgreSQL's server binaries are not installed")
    the_pair = PostgresPair(base=CLUSTER_BASE / f"pg-{uuid.uuid4().hex[:6]}")
    the_pair.wipe()
    the_pair.start()
    try:
        yield the_pair
    finally:
        the_pair.wipe()


async def prepare(pair: PostgresPair, *, synchronous: bool) -> str:
    """A migrated database on the primary, replayed on the replica; its name."""
    name = f"krolik_failover_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(host="127.0.0.1", port=pair.primary_port, user="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        if synchronous:
            await admin.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()
    await upgrade_async(pair.url(pair.primary_port, name))
    primary = await asyncpg.connect(host="127.0.0.1", port=pair.primary_port, user="postgres")
    replica = await asyncpg.connect(host="127.0.0.1", port=pair.replica_port, user="postgres")
    try:
        target = await primary.fetchval("SELECT pg_current_wal_lsn()")
        for _ in range(200):
            if await replica.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the replica did not replay the migrations")
    finally:
        await primary.close()
        await replica.close()
    return name
