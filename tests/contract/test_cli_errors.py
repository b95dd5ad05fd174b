"""A command that cannot reach its store says why in one line and exits 1: no traceback
for a database without Krolik's tables, or one that is not there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import new_database, pg_url


def krolik(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "APP__DB__URL": url}
    return subprocess.run(
        [sys.executable, "-m", "krolik.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args", [["prune", "--dry-run"], ["schedules", "list"], ["queues", "list"]]
)
async def test_a_database_without_the_tables_is_one_line_saying_to_migrate(
    args: list[str],
) -> None:
    async with new_database("krolik_bare", migrate=False) as name:
        done = krolik(pg_url(name), *args)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "run `krolik migrate`" in said, said
    assert "Traceback" not in said, said
    assert len(said.strip().splitlines()) == 1, said


def test_a_database_that_is_not_there_is_one_line_too() -> None:
    done = krolik("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere", "schedules", "list")
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "Traceback" not in said, said
    assert len(said.strip().splitlines()) == 1, said
