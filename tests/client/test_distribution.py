"""The client is a distribution of its own: it installs and imports without the server."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import krolik_client

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"
SERVER_ONLY = ("krolik", "fastapi", "starlette", "sqlalchemy", "asyncpg", "aio_pika", "uvicorn")


def _project(path: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(path.read_text())["project"]
    return project


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    probe = (
        "import sys, krolik_client\n"
        f"found = sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r})\n"
        "print(','.join(found))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CLIENT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "", f"the client imported {done.stdout.strip()}"


def test_it_depends_on_httpx_and_pydantic_only_with_lower_bounds() -> None:
    dependencies = _project(CLIENT / "pyproject.toml")["dependencies"]
    assert isinstance(dependencies, list)
    names = {dependency.partition(">=")[0] for dependency in dependencies}
    assert names == {"httpx", "pydantic"}
    assert all(">=" in dependency for dependency in dependencies)


def test_it_is_released_in_step_with_the_server() -> None:
    server = _project(REPO / "pyproject.toml")["version"]
    assert _project(CLIENT / "pyproject.toml")["version"] == server
    assert krolik_client.__version__ == server
    assert _project(CLIENT / "pyproject.toml")["name"] == "krolik-client"


def test_the_package_is_typed() -> None:
    assert (CLIENT / "src" / "krolik_client" / "py.typed").exists()
