"""A process loads what its roles and mode use: a worker starts without the HTTP stack or
the embedded store (0.4 s of its start-up before), ``krolik dev`` without the AMQP
client."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from krolik.cli import cli
from krolik.node import Mode, Node, Role
from krolik.settings import Settings

roles = [Role(name) for name in sys.argv[1].split(",")]
Node.build(Settings(), roles, mode=Mode(sys.argv[2]))
print(json.dumps(sorted(name for name in sys.modules if "." not in name)))
"""


def loaded_after_building(roles: str, mode: str) -> set[str]:
    """Top-level modules a fresh interpreter holds once it built a node (nothing connects)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, roles, mode],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("roles", ["worker", "relay"])
def test_a_production_worker_or_relay_loads_no_http_stack_and_no_sqlite(roles: str) -> None:
    loaded = loaded_after_building(roles, "production")
    assert {"asyncpg", "aio_pika"} <= loaded  # what it does use
    assert not loaded & {"fastapi", "starlette", "aiosqlite", "limits"}


def test_an_api_in_production_loads_no_embedded_store() -> None:
    loaded = loaded_after_building("api", "production")
    assert "aiosqlite" not in loaded


def test_an_embedded_node_loads_no_amqp_client() -> None:
    # asyncpg it does load: the store's one error classification knows its exceptions.
    loaded = loaded_after_building("api,worker", "embedded")
    assert "aiosqlite" in loaded
    assert not loaded & {"aio_pika", "aiormq"}
