"""``krolik schedules``, run as a user runs it (a subprocess), on PostgreSQL and on a
``krolik dev`` data file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import pg_url

STORES = ["postgres", "sqlite"]


@pytest.fixture(params=STORES, ids=STORES)
def krolik(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The command line (and its environment) of the store of this parameter."""
    env = {"PATH": os.environ["PATH"]}
    command = [sys.executable, "-m", "krolik.cli"]
    if request.param == "postgres":
        request.getfixturevalue("postgres_store")  # its tables emptied
        env["APP__DB__URL"] = pg_url(request.getfixturevalue("pg_database"))
        return command, env
    sqlite = request.getfixturevalue("sqlite_store")  # a migrated file the command opens
    return command, env | {"DATA": str(sqlite.path)}


def run(krolik: tuple[list[str], dict[str, str]], *args: str, code: int = 0) -> str:
    command, env = krolik
    data = ["--data", env["DATA"]] if "DATA" in env else []
    done = subprocess.run(
        [*command, "schedules", *args, *data], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_schedule_is_added_listed_paused_resumed_and_deleted(
    krolik: tuple[list[str], dict[str, str]],
) -> None:
    added = run(krolik, "add", "nightly", "--task", "echo", "--cron", "30 2 * * *",
                "--tz", "Europe/Berlin", "--payload", '{"report": 1}')  # fmt: skip
    assert "created schedule 'nightly'; next run" in added
    run(krolik, "add", "often", "--task", "echo", "--every", "30")
    listed = run(krolik, "list").splitlines()
    assert listed[1].split()[:4] == ["nightly", "api", "30", "2"]
    assert "Europe/Berlin" in listed[1]
    assert listed[2].split()[:5] == ["often", "api", "every", "30s", "active"]
    assert "paused schedule 'often'" in run(krolik, "pause", "often")
    assert run(krolik, "list").splitlines()[2].split()[4] == "paused"
    assert "resumed schedule 'often'" in run(krolik, "resume", "often")
    assert "deleted schedule 'often'" in run(krolik, "delete", "often")
    assert "often" not in run(krolik, "list")


def test_mistakes_are_errors_with_a_message(krolik: tuple[list[str], dict[str, str]]) -> None:
    assert "not a cron expression" in run(
        krolik, "add", "bad", "--task", "echo", "--cron", "61 * * * *", code=1
    )
    assert "unknown time zone" in run(
        krolik, "add", "bad", "--task", "echo", "--cron", "@daily", "--tz", "Nowhere/x", code=1
    )
    run(krolik, "add", "taken", "--task", "echo", "--every", "60")
    assert "exists" in run(krolik, "add", "taken", "--task", "echo", "--every", "5", code=1)
    for verb in ("pause", "resume", "delete"):
        assert "no schedule named 'nope'" in run(krolik, verb, "nope", code=1)
