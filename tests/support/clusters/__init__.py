"""Real clusters beside the machine's services: three RabbitMQ nodes, a PostgreSQL pair.

The shell recipes next to this file start them from Debian's packages on other loopback
ports (RabbitMQ 5673-5675, PostgreSQL 5433/5434 by default; see their headers) and never
touch the services on the standard ports. This module drives them for the cluster tests
and lets a test kill, freeze or stop one node by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
POSTGRES_BIN = Path(os.environ.get("KROLIK_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ClusterError(RuntimeError):
    """A recipe failed; the message carries its output."""


def _run(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise ClusterError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done.stdout


@dataclass
class RabbitCluster:
    """Three (``nodes``) RabbitMQ nodes ``so1..soN@localhost`` clustered together."""

    base: Path
    port0: int = 5673
    nodes: int = 3
    net_ticktime: int = 10
    """Seconds before the other nodes count a silent (frozen) node as down; RabbitMQ's
    default is 60, and until then new connections to the others may wait."""

    @staticmethod
    def available() -> bool:
        return (RABBITMQ_BIN / "rabbitmq-server").is_file()

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {
            "RMQ_BASE": str(self.base),
            "RMQ_NODES": str(self.nodes),
            "RMQ_PORT0": str(self.port0),
            "RMQ_NET_TICKTIME": str(self.net_ticktime),
        }

    def recipe(self, action: str, timeout: float = 240) -> str:
        return _run(["sh", str(HERE / "rabbitmq-cluster.sh"), action], self.env, timeout)

    def start(self) -> None:
        """Start the nodes that are not running (a fresh cluster takes 35-55 s)."""
        self.recipe("start")

    def wipe(self) -> None:
        self.recipe("wipe", timeout=60)

    def port(self, node: int) -> int:
        return self.port0 + node - 1

    def url(self, node: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port(node)}/"

    def urls(self, *order: int) -> str:
        """The nodes' URLs, comma-separated, in ``order`` (default: 1..N)."""
        return ",".join(self.url(node) for node in (order or range(1, self.nodes + 1)))

    def node_name(self, node: int) -> str:
        return f"so{node}@localhost"

    def pid(self, node: int) -> int:
        return int((self.base / f"n{node}" / "pid").read_text().strip())

    def alive(self, node: int) -> bool:
        try:
            os.kill(self.pid(node), 0)
        except (OSError, ValueError):
            return False
        return True

    def kill9(self, node: int) -> None:
        """kill -9 the node's Erlang VM and its helper processes, by PID."""
        pid = self.pid(node)
        children = _children(pid)
        for target in [pid, *children, *(g for c in children for g in _children(c))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        (self.base / f"n{node}" / "pid").unlink(missing_ok=True)

    def freeze(self, node: int) -> None:
        os.kill(self.pid(node), signal.SIGSTOP)

    def thaw(self, node: int) -> None:
        os.kill(self.pid(node), signal.SIGCONT)

    def stop_node(self, node: int) -> None:
        """A clean stop of one node (``rabbitmqctl stop``)."""
        self.ctl(node, "stop", str(self.base / f"n{node}" / "pid"))
        (self.base / f"n{node}" / "pid").unlink(missing_ok=True)

    def ctl(self, node: int, *args: str, timeout: float = 60) -> str:
        env = self.env | {"HOME": str(self.base / "home")}
        command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.node_name(node), *args]
        return _run(command, env, timeout)

    def queue_leader(self, queue: str, *, ask: int = 1) -> int:
        """The node leading quorum queue ``queue``, as the management API of ``ask`` says."""
        url = f"http://127.0.0.1:{self.port0 + 10000 + ask - 1}/api/queues/%2F/{queue}"
        request = urllib.request.Request(url)
        request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
        with urllib.request.urlopen(request, timeout=10) as response:
            leader = json.load(response)["leader"]
        return int(leader.removeprefix("so").split("@")[0])

    def wait_running(self, count: int, *, ask: int, timeout: float = 120) -> None:
        """Wait until node ``ask`` sees ``count`` running nodes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = json.loads(self.ctl(ask, "cluster_status", "--formatter", "json"))
                # A node counts once it takes AMQP connections too: its listener opens a
                # moment after the node reports itself running.
                listening = sum(_listening(self.port(n)) for n in range(1, self.nodes + 1))
                if len(status.get("running_nodes", [])) >= count and listening >= count:
                    return
            except (ClusterError, subprocess.TimeoutExpired, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"{count} running nodes not seen by so{ask} in {timeout}s")
            time.sleep(0.5)


@dataclass
class PostgresPair:
    """A PostgreSQL primary and its streaming hot standby."""

    base: Path
    primary_port: int = 5433
    replica_port: int = 5434

    @staticmethod
    def available() -> bool:
        return (POSTGRES_BIN / "initdb").is_file() and (POSTGRES_BIN / "pg_basebackup").is_file()

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {
            "PG_BASE": str(self.base),
            "PG_PRIMARY_PORT": str(self.primary_port),
            "PG_REPLICA_PORT": str(self.replica_port),
            "PG_BIN": str(POSTGRES_BIN),
        }

    def recipe(self, action: str, timeout: float = 120) -> str:
        return _run(["sh", str(HERE / "postgres-pair.sh"), action], self.env, timeout)

    def start(self) -> None:
        self.recipe("start")

    def wipe(self) -> None:
        self.recipe("wipe")

    def promote(self) -> None:
        self.recipe("promote")

    def stop_primary(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m MODE`` of the primary (immediate: as a crash would)."""
        self._stop("primary", mode)

    def stop_replica(self, mode: str = "fast") -> None:
        self._stop("replica", mode)

    def _stop(self, which: str, mode: str) -> None:
        pg_ctl = str(POSTGRES_BIN / "pg_ctl")
        command = [pg_ctl, "-D", str(self.base / which), "-m", mode, "-w", "stop"]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        _run(command, self.env, 60)

    def url(self, port: int, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{database}"


def _wait_listening(
    process: subprocess.Popen[bytes], port: int, name: str, log: Callable[[], str]
) -> None:
    """Wait until ``process`` accepts connections on ``port``; fail with its log."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"{name} did not start:\n{log()}") from None
            time.sleep(0.1)


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [int(line) for line in out.split()]


PGBOUNCER = Path("/usr/sbin/pgbouncer")


@dataclass
class PgBouncer:
    """PgBouncer in transaction pooling mode in front of ``target_port``, on ``port``.

    Our own instance (Debian's package would start one of its own on 6432): a config in
    ``base``, run in the foreground as the ``postgres`` user (PgBouncer refuses root),
    stopped by PID.
    """

    base: Path
    port: int
    target_port: int = 5432
    pool_mode: str = "transaction"
    process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return PGBOUNCER.is_file()

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "userlist.txt").write_text('"postgres" ""\n"root" ""\n')
        (self.base / "pgbouncer.ini").write_text(
            f"""[databases]
* = host=127.0.0.1 port={self.target_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.base / "userlist.txt"}
pool_mode = {self.pool_mode}
max_client_conn = 1000
default_pool_size = 40
max_db_connections = 80
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.base / "pgbouncer.log"}
"""
        )
        command = [str(PGBOUNCER), str(self.base / "pgbouncer.ini")]
        if os.getuid() == 0:
            shutil.chown(self.base, "postgres")
            for item in self.base.iterdir():
                shutil.chown(item, "postgres")
            command = ["runuser", "-u", "postgres", "--", *command]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_listening(self.process, self.port, "PgBouncer", self.log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for pid in [*_children(self.process.pid), self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


NGINX = Path("/usr/sbin/nginx")
REPO_NGINX_CONF = HERE.parents[2] / "deploy" / "nginx" / "nginx.conf"


@dataclass
class Nginx:
    """nginx in front of ``upstreams`` (loopback ports), with the repository's server block.

    ``deploy/nginx/nginx.conf`` resolves the compose service ``api`` through Docker's DNS;
    here the same block proxies to a static upstream of loopback ports instead, so what
    is tested is the deployed configuration with only its addresses changed.
    """

    base: Path
    port: int
    upstreams: list[int]
    process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return NGINX.is_file() and REPO_NGINX_CONF.is_file()

    def config(self) -> str:
        server_block = REPO_NGINX_CONF.read_text()
        replaced = {
            "resolver 127.0.0.11 valid=10s ipv6=off;": "",
            "resolver_timeout 5s;": "",
            "set $krolik_api http://api:8000;": "",
            "proxy_pass $krolik_api;": "proxy_pass http://krolik_api;",
            "listen 80 default_server;": f"listen 127.0.0.1:{self.port} default_server;",
            "/var/log/nginx/access.log": str(self.base / "access.log"),
        }
        for old, new in replaced.items():
            if old not in server_block:
                raise ClusterError(f"deploy/nginx/nginx.conf no longer has {old!r}")
            server_block = server_block.replace(old, new)
        servers = "\n".join(f"    server 127.0.0.1:{port};" for port in self.upstreams)
        temp = self.base / "temp"
        return f"""daemon off;
master_process on;
worker_processes 1;
pid {self.base / "nginx.pid"};
error_log {self.base / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    upstream krolik_api {{
{servers}
        keepalive 16;
    }}
{server_block}
}}
"""

    def start(self) -> None:
        (self.base / "temp").mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:  # the workers run as nobody and write request bodies here
            (self.base / "temp").chmod(0o777)
        conf = self.base / "nginx.conf"
        conf.write_text(self.config())
        self.process = subprocess.Popen(
            [str(NGINX), "-c", str(conf), "-p", str(self.base)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.process, self.port, "nginx", self.log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the master stops its workers
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        try:
            return (self.base / "error.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
