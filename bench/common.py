"""Shared parts of the benchmarks: a throwaway Krolik deployment, its processes, the figures.

A ``Deployment`` is one benchmark run's own world:

* **PostgreSQL mode** (the default): a database ``krolik_bench_<uuid>`` created on the
  server of ``APP__DB__URL`` (default the local one) and migrated with ``krolik migrate``;
  RabbitMQ queue, exchange and routing key named after the same uuid on the server of
  ``APP__RABBITMQ__URL``. Both are deleted at the end.
* **embedded mode** (``--embedded``): ``krolik dev`` on a SQLite file in a temp folder
  (API, relay, worker and in-process broker in one process); deleted at the end.

Krolik runs as real subprocesses (``python -m krolik.cli api|worker|relay|dev ...``),
each with its own log file in the run's temp folder (kept with ``--keep`` or when the run
fails). Every child gets SIGKILL if the benchmark dies (PR_SET_PDEATHSIG), and each is
ended by its PID only. The benchmark reads its figures straight from the database
(asyncpg, or sqlite3 for the embedded file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` from anywhere finds krolik
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.processes import Proc, die_with_parent, free_port, spawn_krolik  # noqa: E402

DEFAULT_DB_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
FINAL_STATUSES = ("done", "failed", "cancelled")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(bench: str, message: str) -> None:
    print(f"[{bench} {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- figures ---------------------------------------------------------------------------
def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of sorted values, linear between ranks (numpy's
    default); NaN for no values."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Iterable[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, Any]:
    """p50/p95/p99/max/mean of durations given in seconds, as milliseconds (3 decimals)."""
    ordered = sorted(seconds)
    out: dict[str, Any] = {"n": len(ordered)}
    for p in points:
        out[f"p{p:g}"] = _ms(percentile(ordered, p))
    out["max"] = _ms(ordered[-1]) if ordered else None
    out["mean"] = _ms(sum(ordered) / len(ordered)) if ordered else None
    return out


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value * 1000.0, 3)


def fmt_summary(summary: dict[str, Any]) -> str:
    keys = [k for k in summary if k.startswith("p")] + ["max"]
    return "  ".join(f"{k} {summary[k]:.2f} ms" for k in keys if summary.get(k) is not None)


def print_table(rows: Sequence[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in rows)
    print("", flush=True)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", flush=True)
    print("", flush=True)


def emit_json(bench: str, figures: dict[str, Any]) -> None:
    """The last line of every benchmark: one JSON object, ``bench`` first."""
    print(json.dumps({"bench": bench, **figures}, default=str), flush=True)


def finish(bench: str, figures: dict[str, Any]) -> int:
    """Print the JSON line; the exit code says whether the correctness checks passed."""
    emit_json(bench, figures)
    return 0 if figures["ok"] else 1


def to_epoch(value: Any) -> float | None:
    """A timestamp from either database as seconds since the epoch (SQLite's are naive UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    raise TypeError(f"not a timestamp: {value!r}")


# -- CPU accounting --------------------------------------------------------------------
def _proc_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds used so far) for every process we can read."""
    found: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                raw = handle.read().decode(errors="replace")
        except OSError:
            continue
        left, right = raw.find("("), raw.rfind(")")
        comm = raw[left + 1 : right]
        fields = raw[right + 2 :].split()
        # fields[0] is the state (field 3); utime and stime are fields 14 and 15
        found[int(entry)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return found


def _run_queue_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent ready to run but waiting for a CPU."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{pid}/task/{tid}/schedstat") as handle,
            ):
                total += int(handle.read().split()[1])
    return total / 1e9


class CpuMeter:
    """CPU used during a phase, in cores (CPU seconds / wall seconds), by role: the Krolik
    processes by their names, PostgreSQL, RabbitMQ (beam.smp), wrk, this benchmark, and
    everything else. ``waits()`` tells, per Krolik process, the share of the phase its
    threads spent ready to run but waiting for a CPU (the run queue, /proc schedstat):
    on a box shared with other work that is time the process could not compute."""

    def __init__(self, roles: Callable[[], dict[int, str]]) -> None:
        self._roles = roles
        self._before: dict[int, tuple[str, float]] = {}
        self._waits_before: dict[int, float] = {}
        self._started = 0.0
        self.run_queue_wait: dict[str, float] = {}

    def start(self) -> None:
        self._before = _proc_cpu()
        self._waits_before = {pid: _run_queue_wait(pid) for pid in self._roles()}
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        after = _proc_cpu()
        wall = max(time.monotonic() - self._started, 1e-9)
        self.run_queue_wait = {
            name: round((_run_queue_wait(pid) - self._waits_before.get(pid, 0.0)) / wall, 2)
            for pid, name in self._roles().items()
        }
        roles = self._roles() | {os.getpid(): "bench-client"}
        used: dict[str, float] = {}
        for pid, (comm, cpu) in after.items():
            role = roles.get(pid) or {
                "postgres": "postgresql",
                "beam.smp": "rabbitmq",
                "wrk": "wrk",
                "py-spy": "py-spy",
            }.get(comm)
            if role is None:
                role = "other processes"  # e.g. test suites running on the same box
            before = self._before.get(pid)
            delta = cpu - before[1] if before and before[0] == comm else cpu
            used[role] = used.get(role, 0.0) + delta
        return {role: round(seconds / wall, 2) for role, seconds in sorted(used.items())}


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{role} {cores:.2f}" for role, cores in cpu.items() if cores >= 0.01)


def fmt_probe(probe: dict[str, Any]) -> str:
    parts = [
        f"load {probe['load_average_1m']}",
        f"1e6-step Python loop {probe['python_loop_ms']} ms",
    ]
    for key, label in (
        ("pg_commit_ms", "PG commit"),
        ("pg_round_trip_ms", "PG SELECT 1"),
        ("fdatasync_ms", "fdatasync"),
    ):
        if key in probe:
            parts.append(f"{label} p50 {probe[key]['p50']} / p99 {probe[key]['p99']} ms")
    return ", ".join(parts)


def per_unit(
    before: dict[str, int] | None, after: dict[str, int] | None, units: int
) -> dict[str, float] | None:
    """Counter deltas (``db_counters``) per task or request."""
    if before is None or after is None or units <= 0:
        return None
    return {key: round((after[key] - before[key]) / units, 3) for key in after}


def fmt_per_unit(figures: dict[str, float] | None) -> str:
    if not figures:
        return "-"
    return (
        f"{figures['xact_commit']:g} commits + {figures['xact_rollback']:g} rollbacks"
        f" (pool pre-pings), {figures['tup_inserted']:g} rows inserted,"
        f" {figures['tup_updated']:g} updated, {figures['tup_deleted']:g} deleted;"
        f" {figures['sessions'] * 1000:g} connections opened per 1,000"
    )


def load_average() -> float:
    """The 1-minute load average (2 cores here: above 2 means processes wait for a CPU)."""
    return round(os.getloadavg()[0], 2)


# -- the throwaway deployment ----------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="run `krolik dev` on a temp SQLite file instead of PostgreSQL + RabbitMQ",
    )
    parser.add_argument(
        "--queue-type",
        choices=("quorum", "classic"),
        default="quorum",
        help="RabbitMQ queue type (default: quorum, Krolik's default)",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="APP__X=VALUE",
        help="extra Krolik setting for every Krolik process (repeatable)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record the measured phase of the busiest Krolik process with py-spy into DIR",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--profile-nonblocking", action="store_true", help="py-spy --nonblocking")
    parser.add_argument(
        "--profile-format",
        choices=("raw", "flamegraph", "speedscope"),
        default="raw",
        help="py-spy output format (raw: collapsed stacks, read by bench/profile_top.py)",
    )
    parser.add_argument(
        "--source",
        default=os.environ.get("KROLIK_BENCH_SOURCE") or str(REPO_ROOT),
        metavar="DIR",
        help="run the Krolik package found in DIR (e.g. a `git archive` snapshot) instead of "
        "this checkout's (default: $KROLIK_BENCH_SOURCE or the repository)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of this run and every process it starts (negative, as root: ahead of "
        "other work on a shared box; PostgreSQL and RabbitMQ keep theirs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.upper().startswith("APP__"):
            raise SystemExit(f"--set wants APP__NAME=VALUE, not {pair!r}")
        settings[key.upper()] = value
    return settings


def code_info(source: Path) -> dict[str, Any]:
    """Which Krolik code ran: the folder, its git revision (or a REVISION file beside a
    snapshot) and whether krolik/ had uncommitted changes."""
    info: dict[str, Any] = {"source": str(source)}
    revision_file = source / "REVISION"
    if revision_file.exists():
        info["revision"] = revision_file.read_text().strip()
        info["dirty"] = False
        return info
    try:
        info["revision"] = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "krolik"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["dirty"] = bool(changed)
    except (OSError, subprocess.CalledProcessError):
        info["revision"] = None
    return info


class Deployment:
    """A run's own database (or SQLite file), RabbitMQ names and Krolik processes."""

    def __init__(self, bench: str, args: argparse.Namespace) -> None:
        from sqlalchemy.engine import make_url

        self.bench = bench
        self.embedded: bool = args.embedded
        self.queue_type: str = args.queue_type
        self.keep: bool = args.keep
        self.extra = parse_settings(args.settings)
        self.behind_pgbouncer = self.extra.get("APP__DB__PGBOUNCER", "").lower() in ("1", "true")
        self.source = Path(args.source).resolve()
        if not (self.source / "krolik" / "cli.py").exists():
            raise SystemExit(f"--source {self.source} holds no krolik package")
        if self.source != REPO_ROOT:  # this process, too, imports that krolik (lazily)
            sys.path.insert(0, str(self.source))
        self.code = code_info(self.source)
        self.nice: int = args.nice
        if self.nice:
            os.nice(self.nice)  # inherited by every process the run starts
        self.run = uuid.uuid4().hex[:12]
        self.base_db_url = make_url(os.environ.get("APP__DB__URL", DEFAULT_DB_URL))
        self.amqp_url = os.environ.get("APP__RABBITMQ__URL", DEFAULT_AMQP_URL)
        self.admin_amqp_url = self.amqp_url.split(",")[0].strip()
        """One node of a cluster's list: enough to look at or delete the run's queues."""
        self.db_name = f"krolik_bench_{self.run}"
        self.db_url = self.base_db_url.set(database=self.db_name)
        self.queue_name = f"krolik_bench_{self.run}"
        self.exchange_name = f"krolik_bench_{self.run}"
        self.routing_key = f"krolik.bench.{self.run}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"krolik-bench-{bench}-{self.run}-"))
        self.sqlite_path = self.dir / "krolik.sqlite3"
        self.procs: list[Proc] = []
        self.db_created = False
        self.failed = False
        self._pg: Any = None
        self._own_queries = 0
        self._own_sessions = 1  # the probe's
        self._sqlite: sqlite3.Connection | None = None

    @property
    def mode(self) -> str:
        return "embedded" if self.embedded else "postgres"

    def describe(self) -> str:
        code = f"krolik {self.code.get('revision')}{'+dirty' if self.code.get('dirty') else ''}"
        if self.source != REPO_ROOT:
            code += f" from {self.source}"
        if self.embedded:
            return f"{code}; embedded mode, SQLite {self.sqlite_path}"
        return (
            f"{code}; "
            f"database {self.db_name} on {self.base_db_url.host}:{self.base_db_url.port or 5432},"
            f" RabbitMQ queue {self.queue_name} ({self.queue_type}); logs in {self.dir}"
        )

    # -- environment of the Krolik processes --------------------------------------------
    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
        env |= {
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.source), os.environ.get("PYTHONPATH", "")])
            ),
            "APP__DB__URL": self.db_url.render_as_string(hide_password=False),
            "APP__RABBITMQ__URL": self.amqp_url,
            "APP__RABBITMQ__QUEUE_NAME": self.queue_name,
            "APP__RABBITMQ__EXCHANGE_NAME": self.exchange_name,
            "APP__RABBITMQ__ROUTING_KEY": self.routing_key,
            "APP__RABBITMQ__QUEUE_TYPE": self.queue_type,
            "APP__EMBEDDED__PATH": str(self.sqlite_path),
        }
        env |= self.extra
        env |= overrides
        return env

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        log_path = self.dir / f"{len(self.procs):02d}-{name}.log"
        # cwd: the run's own folder, so no stray .env of the caller's folder is read
        proc = spawn_krolik(
            name, list(args), env=env or self.env(), cwd=self.dir, log_path=log_path
        )
        self.procs.append(proc)
        return proc

    def roles(self) -> dict[int, str]:
        return {proc.pid: proc.name for proc in self.procs if proc.alive()}

    # -- set-up and clean-up ------------------------------------------------------------
    def _pg_args(self, database: str) -> dict[str, Any]:
        url = self.base_db_url
        return {
            "host": url.host or "127.0.0.1",
            "port": url.port or 5432,
            "user": url.username or "postgres",
            "password": url.password,
            "database": database,
            "timeout": 10,
            # Behind PgBouncer's transaction mode (--set APP__DB__PGBOUNCER=true) the
            # run's own connections cannot cache prepared statements either.
            **({"statement_cache_size": 0} if self.behind_pgbouncer else {}),
        }

    async def set_up(self) -> None:
        if self.embedded:
            return
        import asyncpg  # type: ignore[import-untyped]

        admin = await asyncpg.connect(**self._pg_args(self.base_db_url.database or "postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{self.db_name}"')
            self.db_created = True
        finally:
            await admin.close()
        migrate = self.spawn("migrate", "migrate")
        code = await asyncio.to_thread(migrate.popen.wait, 120)
        if code != 0:
            raise RuntimeError(f"krolik migrate failed ({code}):\n{migrate.tail()}")

    async def probe(self, rounds: int = 50) -> dict[str, Any]:
        """How busy the machine is right now, to read the figures against (an idle box of
        this kind does an fdatasync in about 0.1 ms): the 1-minute load average, a pure
        Python loop, and on PostgreSQL one-row INSERT commits (each waits for the WAL
        fsync) and SELECT 1 round trips; in embedded mode fdatasync of a temp file."""
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        found: dict[str, Any] = {
            "load_average_1m": load_average(),
            "python_loop_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        commits: list[float] = []
        trips: list[float] = []
        if self.embedded:
            path = self.dir / "fsync-probe"
            with path.open("wb") as handle:
                for _ in range(rounds):
                    handle.write(b"x" * 512)
                    handle.flush()
                    began = time.perf_counter()
                    os.fdatasync(handle.fileno())
                    commits.append(time.perf_counter() - began)
            path.unlink()
            found["fdatasync_ms"] = summary_ms(commits, (50, 99))
            return found
        import asyncpg

        conn = await asyncpg.connect(**self._pg_args(self.db_name))
        try:
            await conn.execute("CREATE TABLE krolik_bench_probe (x int)")
            for _ in range(rounds):
                began = time.perf_counter()
                await conn.execute("INSERT INTO krolik_bench_probe VALUES (1)")
                commits.append(time.perf_counter() - began)
            for _ in range(rounds):
                began = time.perf_counter()
                await conn.fetchval("SELECT 1")
                trips.append(time.perf_counter() - began)
            await conn.execute("DROP TABLE krolik_bench_probe")
        finally:
            await conn.close()
        found["pg_commit_ms"] = summary_ms(commits, (50, 99))
        found["pg_round_trip_ms"] = summary_ms(trips, (50, 99))
        return found

    async def clean_up(self) -> None:
        for proc in self.procs:
            proc.kill()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()
        if not self.embedded:
            await self._delete_rabbit_objects()
            if self.db_created and not self.keep:
                await self._drop_database()
        if self.keep or self.failed:
            say(self.bench, f"kept the logs{' and database' if self.keep else ''} in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _delete_rabbit_objects(self) -> None:
        import aio_pika

        from krolik.broker.topology import Topology
        from krolik.settings import QueueType, RabbitMQSettings

        topology = Topology.from_settings(
            RabbitMQSettings(
                queue_name=self.queue_name,
                exchange_name=self.exchange_name,
                routing_key=self.routing_key,
                queue_type=QueueType(self.queue_type),
            ),
            "default",
        )
        try:
            connection = await aio_pika.connect(self.admin_amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                for name in (topology.queue("default").name, topology.dead_letter_queue):
                    await channel.queue_delete(name)
                for exchange in (topology.exchange, topology.dead_letter_exchange):
                    await channel.exchange_delete(exchange)
        except Exception as exc:
            say(self.bench, f"could not delete the RabbitMQ queues/exchanges: {exc!r}")

    async def _drop_database(self) -> None:
        import asyncpg

        try:
            admin = await asyncpg.connect(**self._pg_args(self.base_db_url.database or "postgres"))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            finally:
                await admin.close()
        except Exception as exc:
            say(self.bench, f"could not drop database {self.db_name}: {exc!r}")

    # -- Krolik processes ---------------------------------------------------------------
    async def start_api(
        self,
        *,
        relay: bool = True,
        concurrency: int | None = None,
        name: str = "api",
        timeout: float = 60.0,
    ) -> tuple[Proc, str]:
        """``krolik api`` (or ``krolik dev`` embedded, with its worker) on a free port,
        once ``/health/ready`` answers 200."""
        port = free_port()
        if self.embedded:
            args = ["dev", "--host", "127.0.0.1", "--port", str(port)]
            args += ["--data", str(self.sqlite_path)]
            if concurrency is not None:
                args += ["--concurrency", str(concurrency)]
            proc = self.spawn("dev", *args)
        else:
            env = self.env(APP__RELAY__ENABLED="true" if relay else "false")
            proc = self.spawn(name, "api", "--host", "127.0.0.1", "--port", str(port), env=env)
        url = f"http://127.0.0.1:{port}"
        await wait_ready(proc, url, timeout)
        return proc, url

    def start_worker(self, concurrency: int, name: str = "worker") -> Proc:
        return self.spawn(name, "worker", "--concurrency", str(concurrency))

    def start_relay(self) -> Proc:
        return self.spawn("relay", "relay")

    # -- the database -------------------------------------------------------------------
    async def fetch(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a parameterless query, on PostgreSQL or the SQLite file."""
        if self.embedded:
            return await asyncio.to_thread(self._sqlite_fetch, sql)
        if self._pg is None:
            import asyncpg

            self._pg = await asyncpg.connect(**self._pg_args(self.db_name))
            self._own_sessions += 1
        self._own_queries += 1
        return [dict(row) for row in await self._pg.fetch(sql)]

    def _sqlite_fetch(self, sql: str) -> list[dict[str, Any]]:
        if self._sqlite is None:
            self._sqlite = sqlite3.connect(self.sqlite_path, timeout=30, check_same_thread=False)
            self._sqlite.row_factory = sqlite3.Row
        return [dict(row) for row in self._sqlite.execute(sql).fetchall()]

    async def db_counters(self) -> dict[str, int] | None:
        """PostgreSQL's counters of the run's database (None embedded): transactions
        committed and rolled back (SQLAlchemy's pool pre-ping on asyncpg is a
        ``BEGIN; ; ROLLBACK``), rows inserted, updated, deleted, and connections opened
        (``sessions``). A backend reports them when it ends or goes idle for a while, so
        read them after stopping Krolik's processes."""
        if self.embedded:
            return None
        if self._pg is not None:  # a backend reports its own counts when it ends
            await self._pg.close()
            self._pg = None
        await asyncio.sleep(0.3)  # ... and the backends of stopped processes theirs
        rows = await self.fetch(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, sessions"
            f" FROM pg_stat_database WHERE datname = '{self.db_name}'"
        )
        if not rows:
            return None
        found = {key: int(value) for key, value in rows[0].items()}
        # This benchmark's own queries (polling) are transactions too: leave out those
        # reported so far (all but the one just made).
        found["xact_commit"] -= self._own_queries - 1
        found["sessions"] -= self._own_sessions - 1
        return found

    async def stop_all(self) -> None:
        """Stop every Krolik process still running (SIGTERM, then SIGKILL), by PID."""
        for proc in self.procs:
            if proc.alive():
                await proc.stop()

    async def scalar(self, sql: str) -> Any:
        rows = await self.fetch(sql)
        return next(iter(rows[0].values())) if rows else None

    async def count_tasks(self) -> int:
        return int(await self.scalar("SELECT count(*) AS n FROM krolik_tasks"))

    async def status_counts(self) -> dict[str, int]:
        rows = await self.fetch("SELECT status, count(*) AS n FROM krolik_tasks GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}

    async def wait_stable_count(self, settle: float = 0.5, timeout: float = 30.0) -> int:
        """The task count once it has not changed for ``settle`` seconds."""
        deadline = time.monotonic() + timeout
        last = await self.count_tasks()
        while time.monotonic() < deadline:
            await asyncio.sleep(settle)
            now = await self.count_tasks()
            if now == last:
                return now
            last = now
        return last

    async def wait_all_final(
        self, expected: int, timeout: float, interval: float = 0.05
    ) -> tuple[bool, float]:
        """Poll until ``expected`` tasks are final; (reached, time.time() when seen)."""
        deadline = time.monotonic() + timeout
        while True:
            final = await self.scalar(
                "SELECT count(*) AS n FROM krolik_tasks"
                " WHERE status IN ('done', 'failed', 'cancelled')"
            )
            if int(final) >= expected:
                return True, time.time()
            if time.monotonic() >= deadline:
                return False, time.time()
            await asyncio.sleep(interval)

    async def queue_depth(self) -> int | None:
        """Messages ready in the run's RabbitMQ queue (passive declare); None if absent."""
        import aio_pika

        connection = await aio_pika.connect(self.admin_amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(self.queue_name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return None
            return int(queue.declaration_result.message_count or 0)


async def wait_ready(proc: Proc, url: str, timeout: float) -> None:
    """Until ``/health/ready`` answers 200 (PostgreSQL and the broker reachable)."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} was not ready within {timeout}s:\n{proc.tail()}")


# -- profiling -------------------------------------------------------------------------
class Profiler:
    """``py-spy record`` of one process for the measured phase (``--profile DIR``).

    py-spy pauses the process for each sample (exact stacks; ``--profile-nonblocking``
    does not pause it, but then many stacks come out cut short): a profiled run is
    slower, so take speeds from runs without ``--profile``."""

    def __init__(self, args: argparse.Namespace, bench: str, mode: str) -> None:
        self.dir = Path(args.profile) if args.profile else None
        self.format: str = args.profile_format
        self.rate: int = args.profile_rate
        self.nonblocking: bool = args.profile_nonblocking
        self.bench = bench
        self.mode = mode
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: Path | None = None
        self.timed = True
        self.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if self.dir is not None and not Path(self.py_spy).exists():
            # Said before the warm-up, not after it.
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")

    def start(self, target: Proc, seconds: float | None = None) -> None:
        """Record ``target`` for ``seconds``, or until ``stop()`` when None."""
        if self.dir is None:
            return
        py_spy = self.py_spy
        self.dir.mkdir(parents=True, exist_ok=True)
        suffix = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}[self.format]
        self.output = self.dir / f"{self.bench}-{self.mode}-{target.name}.{suffix}"
        command = [
            py_spy, "record", "--pid", str(target.pid), "--rate", str(self.rate),
            "--format", self.format, "--output", str(self.output),
        ]  # fmt: skip
        if seconds is not None:
            command += ["--duration", str(math.ceil(seconds))]
        if self.nonblocking:
            command.append("--nonblocking")
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        self.timed = seconds is not None

    async def stop(self) -> str | None:
        if self.proc is None:
            return None
        if not self.timed and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            await asyncio.to_thread(self.proc.wait, 10)
        if self.proc.returncode != 0 and self.proc.stderr is not None:
            say(self.bench, f"py-spy: {self.proc.stderr.read().decode(errors='replace')[-500:]}")
        say(self.bench, f"profile written to {self.output}")
        return str(self.output)


# -- running a benchmark ---------------------------------------------------------------
def run_main(bench: str, body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body`` with SIGTERM/SIGINT cancelling it (so its clean-up still runs)."""
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(body())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        return loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        say(bench, "interrupted; cleaned up")
        return 130
    finally:
        loop.close()


def closing_rows(
    cpu: dict[str, float],
    run_queue_wait: dict[str, float],
    load_avg: Any,
    machine: dict[str, Any],
    *,
    ok: bool,
) -> list[tuple[str, str]]:
    """The last rows of every report: where the CPU went, the machine, the verdict."""
    return [
        ("CPU (cores)", fmt_cpu(cpu)),
        ("waiting for a CPU (share of wall)", fmt_cpu(run_queue_wait)),
        ("load average (1 min, at start)", str(load_avg)),
        ("machine before the run", fmt_probe(machine)),
        ("verdict", "OK" if ok else "FAILED"),
    ]
