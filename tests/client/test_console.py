"""The command line for people, run as a person runs it (a subprocess) against the API
served on a real socket, in both modes: ``krolik submit`` and its exit codes, ``krolik
tasks``, ``krolik workers``, ``krolik tail``; tables for people, ``--json`` for scripts."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest


@pytest.fixture
def app(production_app: Any) -> Any:
    """The PostgreSQL mode only: the commands talk HTTP, the same in both modes."""
    return production_app


async def krolik(url: str, *args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run ``krolik ARGS --url URL``; its exit code and what it printed. Run without
    blocking: the API it talks to is served by this test's own event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "krolik.cli",
        *args,
        "--url",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": os.environ["PATH"], "COLUMNS": "200"},
    )
    out, _ = await asyncio.wait_for(
        process.communicate(None if stdin is None else stdin.encode()), timeout=60
    )
    assert process.returncode is not None
    return process.returncode, out.decode()


def record(said: str) -> Any:
    return json.loads(said)


async def test_submit_waits_and_ends_with_the_task(served: str) -> None:
    code, said = await krolik(served, "submit", "echo", "--payload", '{"a": 1}', "--wait")
    assert code == 0, said
    assert said.strip().endswith('done: {"a": 1}'), said
    code, said = await krolik(served, "submit", "client.explode", "--payload", '"x"', "--wait")
    assert (code, "failed: RuntimeError: cannot handle x" in said) == (1, True), said
    code, said = await krolik(
        served, "submit", "client.nap", "--payload", "1.5", "--wait", "--timeout", "0.3"
    )
    assert code == 3, said
    assert "still" in said, said
    code, said = await krolik(served, "submit", "echo", "--payload", "@-", "--json", stdin="[1]")
    assert code == 0, said
    assert record(said)["payload"] == [1]


async def test_tasks_are_listed_shown_cancelled_and_retried(served: str) -> None:
    code, said = await krolik(
        served, "submit", "client.nap", "--payload", "0", "--delay", "300", "--json"
    )
    assert code == 0, said
    task_id = record(said)["id"]
    code, said = await krolik(served, "tasks", "cancel", str(task_id))
    assert (code, said.strip()) == (0, f"task {task_id} cancelled"), said
    code, said = await krolik(served, "tasks", "ls", "--status", "cancelled", "--json")
    assert task_id in [task["id"] for task in record(said)], said
    code, said = await krolik(served, "tasks", "ls", "--status", "cancelled")
    assert "client.nap" in said, said  # the table for people
    code, said = await krolik(served, "tasks", "retry", str(task_id))
    assert (code, said.strip()) == (0, f"task {task_id} pending"), said
    for _ in range(50):  # retried, it runs at once (nap 0): until it is done
        code, said = await krolik(served, "tasks", "show", str(task_id), "--json")
        if record(said)["status"] == "done":
            break
    assert [a["outcome"] for a in record(said)["attempt_list"]] == ["succeeded"], said
    code, said = await krolik(served, "tasks", "show", str(task_id))
    assert "status    done" in said, said
    assert "succeeded" in said, said  # the attempts' table
    code, said = await krolik(served, "tasks", "show", "999999")
    assert code == 4, said
    assert said.startswith("error: "), said


async def test_workers_and_tail(served: str) -> None:
    code, said = await krolik(served, "workers", "--json")
    assert code == 0, said
    assert [worker["alive"] for worker in record(said)] == [True]
    code, said = await krolik(served, "submit", "echo", "--payload", "2", "--wait", "--json")
    task_id = record(said)["id"]
    code, said = await krolik(served, "tail", "--task", str(task_id), "--json")
    assert code == 0, said
    kinds = [json.loads(line)["kind"] for line in said.splitlines()]
    assert kinds[0] == "queued", said
    assert kinds[-1] == "finished", said


async def test_an_api_that_is_not_there_is_one_line_and_exit_4() -> None:
    code, said = await krolik("http://127.0.0.1:9", "tasks", "ls")
    assert code == 4, said
    assert len(said.strip().splitlines()) == 1, said
    assert said.startswith("error: "), said
