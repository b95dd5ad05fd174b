"""Cluster fixtures: three real RabbitMQ nodes, started once per session.

The clusters run on their own loopback ports (``tests/support/clusters``) and are wiped
at the end, unless ``KROLIK_TEST_KEEP_CLUSTERS`` is set: then the next session finds them
up and starts in seconds instead of a minute. Krolik processes go through ``cluster``,
as in the end-to-end tests.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from krolik.settings import Settings
from tests.conftest import service_missing, test_settings
from tests.e2e.conftest import (  # noqa: F401  (the report hook attaches process logs)
    E2E_TIMINGS,
    Cluster,
    pytest_runtest_makereport,
    settings_env,
)
from tests.support.clusters import RabbitCluster

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
