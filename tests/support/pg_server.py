"""A PostgreSQL server of our own, in a temporary folder, to restart or stop at will.

The machine's PostgreSQL (127.0.0.1:5432) is shared and must never be stopped or
reconfigured, so whatever needs to restart "the database" starts one of these: its
own data folder, a free port on 127.0.0.1, its socket in the private folder, trust
auth. ``initdb`` refuses to run as root, so as root every PostgreSQL program runs as
the ``postgres`` user (``runuser``), in a folder that user owns; as another user they
run directly. ``stop()`` stops the server and removes the folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_BIN = Path(os.environ.get("KROLIK_PG_BIN", "/usr/lib/postgresql/15/bin"))
RESTART_MODES = ("smart", "fast", "immediate")


class PgServerError(RuntimeError):
    """A PostgreSQL program of the private server failed; the message carries its output."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostgres:
    """One throwaway PostgreSQL server: ``start()``, ``restart()``, ``stop()``."""

    def __init__(
        self,
        bin_dir: Path = DEFAULT_BIN,
        *,
        port: int | None = None,
        max_connections: int = 300,
        prefix: str = "krolik-pg-",
    ) -> None:
        self.bin_dir = bin_dir
        self.port = port or _free_port()
        self.max_connections = max_connections
        self.prefix = prefix
        self.base: Path | None = None
        self.running = False

    @staticmethod
    def available(bin_dir: Path = DEFAULT_BIN) -> bool:
        """Whether the binaries are there (and, as root, the user to run them as)."""
        if not (bin_dir / "initdb").is_file() or not (bin_dir / "pg_ctl").is_file():
            return False
        if os.geteuid() != 0:
            return True
        return shutil.which("runuser") is not None and _has_postgres_user()

    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "server.log"

    def url(self, database: str = "postgres", *, port: int | None = None) -> str:
        """A SQLAlchemy asyncpg URL; ``port`` to go through a proxy in front of it."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{port or self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN, straight to the server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """initdb (the first time) and start; waits until it accepts connections."""
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix=self.prefix))
            if os.geteuid() == 0:
                # The folder (mode 700) must be the server's; its parent stays root's.
                shutil.chown(self.base, user="postgres", group="postgres")
            self._run(
                "initdb",
                "-D", str(self.data_dir),
                "-U", "postgres",
                "--auth=trust",
                "-E", "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )  # fmt: skip
            conf = (
                "\n# krolik private server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.base}'\n"
                f"max_connections = {self.max_connections}\n"
                "shared_buffers = 128MB\n"
                "log_min_messages = warning\n"
                "log_line_prefix = '%m [%p] '\n"
            )
            with (self.data_dir / "postgresql.conf").open("a") as config:
                config.write(conf)  # root may write the server user's file; it stays theirs
        self._pg_ctl("start", "-l", str(self.log_path))
        self.running = True

    def restart(self, mode: str = "fast") -> float:
        """``pg_ctl restart -m mode``, waiting until it accepts connections again.

        Returns the seconds it took. ``fast`` ends every session (clients see
        ``57P01 admin_shutdown``), checkpoints and starts with nothing to recover;
        ``immediate`` is a crash: no checkpoint, WAL replay at start.
        """
        if mode not in RESTART_MODES:
            raise ValueError(f"restart mode must be one of {RESTART_MODES}, not {mode!r}")
        began = time.monotonic()
        self._pg_ctl("restart", "-m", mode, "-l", str(self.log_path))
        return time.monotonic() - began

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server (fast, then immediate) and remove its folder; safe to repeat."""
        if self.base is None:
            return
        if self.running or (self.data_dir / "postmaster.pid").exists():
            try:
                self._pg_ctl("stop", "-m", "fast", timeout=30)
            except (PgServerError, subprocess.TimeoutExpired):
                with contextlib.suppress(PgServerError, subprocess.TimeoutExpired):
                    self._pg_ctl("stop", "-m", "immediate", timeout=30)
            self.running = False
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    # -- running PostgreSQL's programs ----------------------------------------------
    def _pg_ctl(self, action: str, *args: str, timeout: float = 90) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", action, *args, timeout=timeout
        )

    def _run(self, program: str, *args: str, timeout: float = 90) -> None:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        # cwd: the server user may not be allowed into the caller's folder.
        done = subprocess.run(
            command,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise PgServerError(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 20) -> str:
        if self.base is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- server log ---\n" + "\n".join(tail)


def _has_postgres_user() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True
