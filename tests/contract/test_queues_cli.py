"""``krolik queues``, run as a user runs it (a subprocess), on PostgreSQL and on a
``krolik dev`` data file: pause, resume and limits are the same data the API changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from krolik.store.base import TaskStore
from krolik.store.records import NewTask
from tests.conftest import pg_url

STORES = ["postgres", "sqlite"]


@pytest.fixture(params=STORES, ids=STORES)
def krolik(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[list[str], dict[str, str], TaskStore]:
    """The command line, its environment, and the store it opens."""
    env = {"PATH": os.environ["PATH"]}
    command = [sys.executable, "-m", "krolik.cli"]
    if request.param == "postgres":
        store: TaskStore = request.getfixturevalue("postgres_store")  # its tables emptied
        env["APP__DB__URL"] = pg_url(request.getfixturevalue("pg_database"))
        return command, env, store
    sqlite = request.getfixturevalue("sqlite_store")  # a migrated file the command opens
    return command, env | {"DATA": str(sqlite.path)}, sqlite


def run(krolik: tuple[list[str], dict[str, str], TaskStore], *args: str, code: int = 0) -> str:
    command, env, _ = krolik
    data = ["--data", env["DATA"]] if "DATA" in env else []
    done = subprocess.run(
        [*command, "queues", *args, *data], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout + done.stderr


async def test_a_queue_is_paused_limited_and_resumed(
    krolik: tuple[list[str], dict[str, str], TaskStore],
) -> None:
    store = krolik[2]
    assert "paused queue 'emails'" in run(krolik, "pause", "emails")
    assert (await store.get_gates("emails")).paused
    said = run(krolik, "set", "emails", "--max-running", "4", "--rate-limit", "60/minute")
    assert "max_running 4, max_running_per_key -, rate_limit 60/minute" in said
    [row] = run(krolik, "list").splitlines()[1:]
    assert row.split()[:5] == ["emails", "paused", "4", "-", "60/minute"]
    [held] = await store.enqueue([NewTask(name="echo", queue="emails", payload=1)])
    assert await store.claim_many([held.task.id], "w", 30, {"echo": 3}) == [None]
    assert run(krolik, "list").splitlines()[1].endswith("1 paused")
    assert "resumed queue 'emails'" in run(krolik, "resume", "emails")
    assert (await store.get(held.task.id)).held is None  # type: ignore[union-attr]
    run(krolik, "set", "emails", "--max-running", "none")
    assert (await store.get_gates("emails")).max_running is None
    said = run(krolik, "set", "emails", "--default-priority", "-5")
    assert said.strip().endswith("default_priority -5")
    [task] = await store.enqueue([NewTask(name="echo", queue="emails", payload=2)])
    assert task.task.priority == -5


def test_mistakes_are_errors_with_a_message(
    krolik: tuple[list[str], dict[str, str], TaskStore],
) -> None:
    assert "not a rate limit" in run(krolik, "set", "q", "--rate-limit", "often", code=1)
    assert "takes a number from 1" in run(krolik, "set", "q", "--max-running-per-key", "0", code=1)
    assert "nothing to change" in run(krolik, "set", "q", code=1)
    for wrong in ("1001", "high"):
        said = run(krolik, "set", "q", "--default-priority", wrong, code=1)
        assert "--default-priority takes a number from -1000 to 1000" in said
