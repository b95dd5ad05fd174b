"""Real ``krolik`` processes for tests and benchmarks: started, watched, killed by PID.

Both the end-to-end tests (``tests/e2e/conftest.py``) and the benchmarks
(``bench/common.py``) run Krolik as subprocesses; this is what they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGKILL when its parent (pytest, a benchmark) dies, so no
    Krolik process outlives the run that started it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    """One subprocess and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """kill -9, by PID, and reap it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.popen.wait()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID, wait, then SIGKILL; the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self.kill()
        return self.popen.returncode

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.popen.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        return self.popen.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def spawn_krolik(
    name: str, args: list[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
) -> Proc:
    """``python -m krolik.cli ARGS`` with only ``env`` for its environment's ``APP__``
    settings, its output in ``log_path``."""
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", "krolik.cli", *args],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    return Proc(name, popen, log_path)
