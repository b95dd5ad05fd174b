#!/usr/bin/env python
"""Chaos at scale: real Krolik processes killed and cut off while they work; nothing may be lost.

    python bench/chaos.py       # 10,000 tasks, 3 workers, 2 min of chaos, then the drain
    python bench/chaos.py --tasks 60 --duration 12 --kill-interval 1 --settle 3 \\
        --rabbit-outage 2 --worker-pg-cut 2 --blocking-share 0.05 --timeout 60   # small

What it does
  * starts a PostgreSQL server of its own (``tests/support/pg_server.py``: a temporary
    data folder, a free port on 127.0.0.1, trust auth), because it restarts it; the
    machine's PostgreSQL on 5432 is never touched. It creates a database there, runs
    ``krolik migrate`` and adds two side tables: ``chaos_runs`` (one row per handler
    execution, written by the handler in ``bench/chaos_handlers.py``) and
    ``chaos_completions`` (one row per transition of a task to ``done``, written by a
    trigger *in the same transaction* as Krolik's completion, so it counts recorded
    completions, not executions);
  * starts one ``krolik api`` (its outbox relay inside) and ``--workers`` ``krolik
    worker`` processes on uuid-named RabbitMQ queue/exchange (classic queues). Every
    process reaches RabbitMQ through one ``TcpProxy`` (``tests/support/proxy.py``) of
    this script; each worker reaches PostgreSQL through a ``TcpProxy`` of its own (the
    API and the handlers' side-table writes go straight to the server);
  * submits ``--tasks`` tasks over ``--duration`` seconds by HTTP POST, each with an
    idempotency key and retried until the API answers, as a careful client would. Each
    handler sleeps a random 0..``--max-sleep-ms`` (``asyncio.sleep``); a
    ``--blocking-share`` of them then blocks the worker's event loop with
    ``time.sleep(--block-seconds)`` (default 3 leases) inside the ``async def``;
  * meanwhile, within ``--duration``: kills (-9) one random worker every
    ``--kill-interval`` seconds and restarts it (one that has been consuming for
    ``--min-uptime``: a kill that falls due while every worker still boots waits, and
    the wait is reported); kills (-9) the API once and restarts it; "stops RabbitMQ"
    for ``--rabbit-outage`` seconds once; restarts PostgreSQL once (``pg_ctl restart
    -m fast``); cuts one worker's PostgreSQL proxy for ``--worker-pg-cut`` seconds
    once, while the others go on. Each one-off event happens at a fraction of
    ``--duration`` (``--pg-restart-at``, ``--api-kill-at``, ...).

RabbitMQ is NOT really stopped: the server is shared and must stay up. The outage
closes the AMQP proxy's listener and aborts every open connection (the processes see
their connections reset and new connections refused), then listens again. A cut of a
worker's PostgreSQL proxy does the same to that worker's database connections only.

The PostgreSQL restart is ``-m fast`` by default (``--pg-restart-mode``): the
operator's restart, where every session is ended (clients see ``57P01
admin_shutdown``), a checkpoint is written and the server starts with nothing to
recover. ``immediate`` is a crash instead (connections just drop, WAL replayed at
start): a test of PostgreSQL's recovery more than of Krolik. Worker kills pause from
just before the restart until ``--settle`` seconds after it, so that every process
can be checked: the API and each worker must still be the same process (same PID,
alive) then, or the run fails. The worker whose database is cut is spared the kills
during its cut and ``--settle`` after, and must be the same process afterwards too;
it is one that runs tasks but does not block its loop at that moment, so that a lease
lost to the cut and a blocked loop are not mixed up.

At the end it waits (at most ``--timeout`` seconds) until every task is final and
prints the figures, then one JSON line with all of them. Re-runs (a handler executed
more than once for one task) are allowed where the worker that ran the earlier run
was killed by this script after that run started and before the next one did; they
are also explained (and counted apart) where that worker's database was cut, or the
server restarted, meanwhile: a lease cannot be kept without the database. The runs of
the unexplained ones (and of the task run most often) are printed. It exits 1
if any task was lost (accepted by the API but not in the database), is stuck (still
pending or processing), failed, finished twice (more than one completion recorded),
is done with a result that no finished execution produced, if a loop-blocking task
ran again without such an explanation, or if a process that was not killed on
purpose died; 0 otherwise. It stops and removes its PostgreSQL server and deletes its
RabbitMQ queues and exchanges at the end, also on SIGTERM/SIGINT and on errors
(``--keep`` keeps the server's folder, stopped, and the process logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from anywhere

import aio_pika
import asyncpg
import httpx

from krolik.broker.topology import Topology
from krolik.settings import QueueType, RabbitMQSettings
from tests.support.pg_server import DEFAULT_BIN, RESTART_MODES, PrivatePostgres
from tests.support.proxy import TcpProxy

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DB_NAME = "krolik_chaos"
FINAL = ("done", "failed", "cancelled")
SUBMIT_GIVE_UP_SECONDS = 120.0
"""How long the client retries one task's POST before it counts as given up."""
CLOCK_SLACK = 0.5
"""Seconds of tolerance between this script's clock readings and the database's."""
# Log events worth counting (structlog JSON lines, key "event").
EVENTS = (
    "task_rescued",
    "tasks_redispatched",
    "task_put_back",
    "tasks_handed_back",
    "task_released",
    "task_result_discarded",
    "lease_lost",
    "lease_let_go",
    "task_abandoned",
    "outcome_not_recorded",
    "task_run_crashed",
    "claim_failed",
    "delivery_failed",
    "heartbeat_failed",
    "event_loop_blocked",
    "store_unavailable",
    "relay_publish_failed",
    "relay_broker_unavailable",
    "broker_unavailable",
    "waiting_for_service",
    "worker_registered_again",
    "orphaned_runs_found",
    "lease_keeper_crashed",
    "unhandled_error",
)

SIDE_TABLES = """
CREATE TABLE chaos_runs (
    id            bigserial PRIMARY KEY,
    task_id       bigint      NOT NULL,
    attempt       integer     NOT NULL,
    worker_id     text        NOT NULL,
    pid           integer     NOT NULL,
    token         text        NOT NULL UNIQUE,
    block_seconds real        NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz
);
CREATE INDEX ON chaos_runs (task_id);

CREATE TABLE chaos_completions (
    id          bigserial PRIMARY KEY,
    task_id     bigint      NOT NULL,
    attempts    integer     NOT NULL,
    worker_id   text,
    result      jsonb,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON chaos_completions (task_id);

-- Every UPDATE that writes status = 'done' is a recorded completion, in the same
-- transaction as Krolik's own write: two of them for one task is a double finish.
CREATE FUNCTION chaos_record_completion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_completions (task_id, attempts, worker_id, result)
    VALUES (NEW.id, NEW.attempts, NEW.worker_id, NEW.result);
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_completion AFTER UPDATE OF status ON krolik_tasks
    FOR EACH ROW WHEN (NEW.status = 'done') EXECUTE FUNCTION chaos_record_completion();
"""


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: a child gets SIGKILL if this script dies, so no worker outlives the run.

    (The signal follows the parent *thread*: processes are only started from the
    main thread.)"""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- processes -----------------------------------------------------------------------
@dataclass
class Slot:
    """One Krolik process role (a worker, the API): killed -9 and started again."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_dir: Path
    generation: int = 0
    started_at: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    history: list[subprocess.Popen[bytes]] = field(default_factory=list)
    unexpected_exits: list[int] = field(default_factory=list)
    log_path: Path | None = None
    ready_at: float | None = None
    """When the current process logged ``worker_started`` (consuming), monotonic."""
    boot_seconds: list[float] = field(default_factory=list)
    """Start to ``worker_started``, for each process that got that far."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.generation += 1
        log_path = self.log_dir / f"{self.name}.{self.generation:03d}.log"
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "krolik.cli", *self.args],
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.history.append(self.proc)
        self.started_at = time.monotonic()
        self.log_path = log_path
        self.ready_at = None

    def serving_for(self) -> float | None:
        """Seconds since this worker process started consuming; None: not yet (booting)."""
        if self.ready_at is None and self.log_path is not None and self.alive():
            with contextlib.suppress(OSError):
                if b'"worker_started"' in self.log_path.read_bytes():
                    self.ready_at = time.monotonic()
                    self.boot_seconds.append(self.ready_at - self.started_at)
        return None if self.ready_at is None else time.monotonic() - self.ready_at

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """kill -9 by PID, and reap it; returns the (wall clock) time of the kill."""
        killed_at = time.time()
        if self.proc is None:
            return killed_at
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return killed_at

    def restart_if_dead(self) -> bool:
        """A process that died without being killed by us is recorded and restarted."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits.append(self.proc.returncode)
            say(
                f"{self.name} (pid {self.proc.pid}) exited by itself "
                f"(code {self.proc.returncode}); restarting"
            )
            self.start()
            return True
        return False

    def kill_all(self) -> None:
        for proc in self.history:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


# -- what happened -------------------------------------------------------------------
@dataclass
class Submission:
    accepted: dict[int, int] = field(default_factory=dict)  # index -> task id
    replayed: int = 0  # 200: the idempotency key was already committed
    post_retries: int = 0
    given_up: int = 0
    seconds: float = 0.0
    """From the first POST to the last answer."""


@dataclass
class Events:
    """The chaos done on purpose, with wall-clock times to compare with the database's."""

    worker_kills: int = 0
    kill_wait_seconds: float = 0.0
    """How long due kills waited, in all, for a worker that had served ``--min-uptime``."""
    api_kills: int = 0
    rabbit_outages: int = 0
    rabbit_outage_seconds: float = 0.0
    pg_restarts: int = 0
    pg_restart_seconds: float = 0.0
    worker_pg_cuts: int = 0
    worker_pg_cut_seconds: float = 0.0
    killed: dict[int, float] = field(default_factory=dict)
    """PID -> when this script killed it."""
    pg_restart_windows: list[tuple[float, float]] = field(default_factory=list)
    pg_cut_windows: list[tuple[int, float, float]] = field(default_factory=list)
    """(pid of the cut worker, cut at, restored at)."""
    survival_checks: list[str] = field(default_factory=list)
    casualties: list[str] = field(default_factory=list)
    """Processes that had to survive an outage and did not."""
    timeline: list[str] = field(default_factory=list)

    def note(self, started: float, what: str) -> None:
        line = f"t+{time.monotonic() - started:6.1f}s {what}"
        self.timeline.append(line)
        say(line)


# -- re-runs and what explains them ---------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    task_id: int
    pid: int
    token: str
    block_seconds: float
    started: float
    finished: float | None


@dataclass
class Reruns:
    tasks: int = 0
    """Tasks whose handler ran more than once."""
    extra_runs: int = 0
    """Runs beyond one per task (those whose outcome was not the recorded one)."""
    by_kill: int = 0
    by_pg_cut: int = 0
    by_pg_restart: int = 0
    claimed_before_stall: int = 0
    """Not explained, and of one kind told apart (see ``explain_reruns``)."""
    unexplained: int = 0
    unexplained_tasks: list[int] = field(default_factory=list)
    stall_tasks: list[int] = field(default_factory=list)


STALL_RESUME_SECONDS = 2.0
"""A run that starts this soon after a loop-blocking run of its process ended was
waiting for that loop: it had been claimed before the loop stalled."""


def loop_stalls(runs: list[RunRow]) -> dict[int, list[tuple[float, float]]]:
    """PID -> (start, end) of each finished loop-blocking run of that process."""
    stalls: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        if run.block_seconds > 0 and run.finished is not None:
            stalls[run.pid].append((run.started, run.finished))
    return stalls


def explain_reruns(
    runs: list[RunRow],
    recorded: dict[int, str],
    events: Events,
    lease_seconds: float,
    stalls: dict[int, list[tuple[float, float]]],
) -> Reruns:
    """Why each run but the recorded one of a task was not the last word.

    An earlier run ``r`` is followed by the next run of the task, started at ``n``.
    It is explained by a kill when this script killed ``r``'s process after ``r``
    started and before ``n`` (the lease then ran out, the task was rescued); by a cut
    when ``r``'s worker had its database cut at some point between ``r``'s start and
    ``n``; by the restart when the server restarted then. Kill first, then cut, then
    restart. A run after the recorded one would start from ``n`` = infinity.

    The rest is unexplained, with one kind counted apart: ``r`` started right when
    its worker's loop came back from a handler that blocked it for longer than a lease
    (``stalls``): the task had been claimed just before the loop stalled. The lease
    keeper keeps every lease of a worker whose loop is stalled, so such a run must not
    happen (it once did, when the keeper kept only the runs the loop had registered).
    """
    by_task: dict[int, list[RunRow]] = defaultdict(list)
    for row in runs:
        by_task[row.task_id].append(row)
    result = Reruns()
    for task_id, rows in by_task.items():
        if len(rows) < 2:
            continue
        rows.sort(key=lambda row: row.started)
        result.tasks += 1
        done_run = next((row for row in rows if row.token == recorded.get(task_id)), None)
        for index, run in enumerate(rows):
            if run is done_run:
                continue
            result.extra_runs += 1
            following = rows[index + 1].started if index + 1 < len(rows) else math.inf
            # A run that started after the recorded one ran a claim its worker had lost
            # before starting it: only a late start explains that, not what came after.
            late = done_run is not None and run.started > done_run.started
            cause = _cause(run, following, late, events, lease_seconds, stalls)
            if cause == "kill":
                result.by_kill += 1
            elif cause == "pg_cut":
                result.by_pg_cut += 1
            elif cause == "pg_restart":
                result.by_pg_restart += 1
            elif cause == "stall":
                result.claimed_before_stall += 1
                if task_id not in result.stall_tasks:
                    result.stall_tasks.append(task_id)
            else:
                result.unexplained += 1
                if task_id not in result.unexplained_tasks:
                    result.unexplained_tasks.append(task_id)
    return result


def _cause(
    run: RunRow,
    following: float,
    late: bool,
    events: Events,
    lease_seconds: float,
    stalls: dict[int, list[tuple[float, float]]],
) -> str:
    """What made ``run`` not the last word: kill, pg_cut, pg_restart, stall or ""."""
    began, upto = run.started - CLOCK_SLACK, following + CLOCK_SLACK
    if not late:
        killed_at = events.killed.get(run.pid)
        if killed_at is not None and began <= killed_at <= upto:
            return "kill"
        if any(
            pid == run.pid and cut_at <= upto and restored_at >= began
            for pid, cut_at, restored_at in events.pg_cut_windows
        ):
            return "pg_cut"
        if any(
            down <= upto and up + lease_seconds >= began for down, up in events.pg_restart_windows
        ):
            return "pg_restart"
    if any(
        end - start >= lease_seconds
        and end - CLOCK_SLACK <= run.started <= end + STALL_RESUME_SECONDS
        for start, end in stalls.get(run.pid, ())
    ):
        return "stall"
    return ""


# -- the run -------------------------------------------------------------------------
class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.run = uuid.uuid4().hex[:10]
        self.amqp_url = os.environ.get("APP__RABBITMQ__URL", DEFAULT_AMQP_URL)
        self.rabbit = RabbitMQSettings(
            url=self.amqp_url,
            queue_name=f"krolik_chaos_{self.run}",
            exchange_name=f"krolik_chaos_{self.run}",
            routing_key=f"krolik.chaos.{self.run}",
            queue_type=QueueType.CLASSIC,
        )
        self.pg = PrivatePostgres(Path(args.pg_bin), prefix=f"krolik-chaos-pg-{self.run}-")
        amqp = urlsplit(self.amqp_url)
        self.amqp_proxy = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
        self.db_proxies: dict[str, TcpProxy] = {}
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"krolik-chaos-{self.run}-"))
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.slots: list[Slot] = []
        self.api: Slot | None = None
        self.workers: list[Slot] = []
        self.submission = Submission()
        self.events = Events()
        self.wall_started = time.monotonic()
        self.started = time.monotonic()
        self.started_epoch = time.time()
        self.kills_paused = False
        self.spared: set[str] = set()
        """Workers the periodic kills leave alone for now (the one whose database is cut)."""
        self.down_on_purpose: set[str] = set()
        """Slots this script has taken down and brings back itself (the API)."""
        count = math.ceil(args.blocking_share * args.tasks) if args.blocking_share > 0 else 0
        self.blocking = set(self.rng.sample(range(args.tasks), min(count, args.tasks)))
        self.sleep_ms = [
            round(self.rng.uniform(0, args.max_sleep_ms), 1) for _ in range(args.tasks)
        ]

    # -- set-up ------------------------------------------------------------------
    def _proxied_amqp_url(self) -> str:
        parts = urlsplit(self.amqp_url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}127.0.0.1:{self.amqp_proxy.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def krolik_env(self, db_port: int | None = None) -> dict[str, str]:
        """The environment of a Krolik process; ``db_port``: its PostgreSQL proxy."""
        a = self.args
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])
                ),
                "APP__DB__URL": self.pg.url(DB_NAME, port=db_port),
                "APP__DB__POOL_SIZE": "10",
                "APP__RABBITMQ__URL": self._proxied_amqp_url(),
                "APP__RABBITMQ__QUEUE_NAME": self.rabbit.queue_name,
                "APP__RABBITMQ__EXCHANGE_NAME": self.rabbit.exchange_name,
                "APP__RABBITMQ__ROUTING_KEY": self.rabbit.routing_key,
                "APP__RABBITMQ__QUEUE_TYPE": "classic",
                "APP__RABBITMQ__PUBLISH_TIMEOUT_SECONDS": "3",
                "APP__WORKER__LEASE_SECONDS": str(a.lease),
                "APP__WORKER__HEARTBEAT_SECONDS": str(a.heartbeat),
                "APP__WORKER__SHUTDOWN_GRACE_SECONDS": "2",
                "APP__MAINTENANCE__RESCUE_INTERVAL_SECONDS": str(a.rescue_interval),
                "APP__MAINTENANCE__REDISPATCH_AFTER_SECONDS": str(a.redispatch_after),
                "APP__RELAY__POLL_SECONDS": "0.2",
                "APP__RELAY__CLAIM_SECONDS": "5",
                "CHAOS_RUNS_DSN": self.pg.dsn(DB_NAME),
            }
        )
        return env

    async def set_up(self) -> None:
        await asyncio.to_thread(self.pg.start)
        admin = await asyncpg.connect(self.pg.dsn(), timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await admin.close()
        migrate = Slot("migrate", ["migrate"], self.krolik_env(), self.log_dir)
        migrate.start()
        assert migrate.proc is not None
        code = await asyncio.to_thread(migrate.proc.wait, 120)
        if code != 0:
            raise RuntimeError(f"krolik migrate failed ({code}); see {self.log_dir}")
        conn = await asyncpg.connect(self.pg.dsn(DB_NAME), timeout=10)
        try:
            await conn.execute(SIDE_TABLES)
        finally:
            await conn.close()
        await self.amqp_proxy.start()
        self.api = Slot(
            "api",
            ["api", "--host", "127.0.0.1", "--port", str(self.api_port)],
            self.krolik_env(),
            self.log_dir,
        )
        a = self.args
        for n in range(1, a.workers + 1):
            name = f"worker{n}"
            proxy = TcpProxy("127.0.0.1", self.pg.port)
            await proxy.start()
            self.db_proxies[name] = proxy
            self.workers.append(
                Slot(
                    name,
                    ["worker", "--app", "chaos_handlers", "--concurrency", str(a.concurrency)],
                    self.krolik_env(db_port=proxy.port),
                    self.log_dir,
                )
            )
        self.slots = [self.api, *self.workers]
        for slot in self.slots:
            slot.start()
        await self.wait_api(60)

    async def wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.api_url}/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the API did not come up within {timeout}s; see {self.log_dir}")

    # -- load --------------------------------------------------------------------
    def task_body(self, index: int) -> dict[str, Any]:
        block = self.args.block_seconds if index in self.blocking else 0.0
        return {
            "name": "chaos",
            "payload": {"i": index, "sleep_ms": self.sleep_ms[index], "block_seconds": block},
            "idempotency_key": f"chaos-{self.run}-{index}",
            "max_attempts": self.args.max_attempts,
        }

    async def submit_all(self) -> None:
        a = self.args
        gap = a.duration / max(a.tasks, 1)
        gate = asyncio.Semaphore(a.submitters)
        limits = httpx.Limits(max_connections=a.submitters, max_keepalive_connections=a.submitters)
        async with httpx.AsyncClient(timeout=5, limits=limits) as client:

            async def submit(index: int) -> None:
                body = self.task_body(index)
                give_up_at = time.monotonic() + SUBMIT_GIVE_UP_SECONDS
                try:
                    while time.monotonic() < give_up_at:
                        try:
                            response = await client.post(f"{self.api_url}/tasks/", json=body)
                        except httpx.TransportError:
                            response = None
                        if response is not None and response.status_code in (200, 201):
                            self.submission.accepted[index] = response.json()["task_id"]
                            if response.status_code == 200:
                                self.submission.replayed += 1
                            return
                        self.submission.post_retries += 1
                        await asyncio.sleep(0.2)
                    self.submission.given_up += 1
                finally:
                    gate.release()

            pending: set[asyncio.Task[None]] = set()
            try:
                for index in range(a.tasks):
                    delay = self.started + index * gap - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await gate.acquire()
                    job = asyncio.create_task(submit(index))
                    pending.add(job)
                    job.add_done_callback(pending.discard)
                await asyncio.gather(*pending)
            finally:  # interrupted: no POST goes on behind the clean-up
                for job in list(pending):
                    job.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        self.submission.seconds = time.monotonic() - self.started

    # -- chaos -------------------------------------------------------------------
    def settled_workers(self) -> list[Slot]:
        """Workers the kills may take: consuming for ``--min-uptime`` (likely mid-task).

        A worker still booting is left alone: on two loaded cores a boot takes seconds,
        and killing workers before they ever take a task would test nothing and stall
        the run."""
        eligible = []
        for worker in self.workers:
            serving = worker.serving_for()
            if worker.name in self.spared or serving is None:
                continue
            if serving >= self.args.min_uptime:
                eligible.append(worker)
        return eligible

    def pick_victim(self) -> Slot | None:
        """A random settled worker; None: the kill waits until there is one."""
        settled = self.settled_workers()
        return self.rng.choice(settled) if settled else None

    def kill_worker(self, victim: Slot) -> None:
        pid = victim.pid
        serving = victim.serving_for() or 0.0
        killed_at = victim.kill()
        if pid is not None:
            self.events.killed[pid] = killed_at
        self.events.worker_kills += 1
        victim.start()
        self.events.note(
            self.started,
            f"kill -9 {victim.name} (pid {pid}, serving for {serving:.1f}s); restarted",
        )

    async def chaos(self, submitted: asyncio.Task[None]) -> None:
        a = self.args
        scheduled = [
            (a.pg_restart_at, a.pg_restart_at >= 0, self.pg_restart),
            (a.api_kill_at, a.api_kill_at >= 0, self.api_crash),
            (a.rabbit_outage_at, a.rabbit_outage > 0, self.rabbit_outage),
            (a.worker_pg_cut_at, a.worker_pg_cut > 0, self.worker_pg_cut),
        ]
        due = sorted(
            ((self.started + a.duration * at, event) for at, wanted, event in scheduled if wanted),
            key=lambda item: item[0],
        )
        next_kill = self.started + a.kill_interval
        side_events: list[asyncio.Task[None]] = []
        while time.monotonic() < self.started + a.duration or not submitted.done():
            now = time.monotonic()
            if self.kills_paused:  # a pause is not a wait for a serving worker
                next_kill = max(next_kill, now)
            elif a.kill_interval > 0 and now >= next_kill:
                victim = self.pick_victim()
                if victim is not None:  # else it waits for a worker that is serving
                    self.events.kill_wait_seconds += now - next_kill
                    self.kill_worker(victim)
                    next_kill = now + a.kill_interval
            while due and now >= due[0][0]:
                _, event = due.pop(0)
                side_events.append(asyncio.create_task(event()))
            for slot in self.slots:
                if slot.name not in self.down_on_purpose:
                    slot.restart_if_dead()
            for job in side_events:
                if job.done():
                    job.result()  # an event that went wrong ends the run
            await asyncio.sleep(0.05)
        await asyncio.gather(*side_events)

    def check_same_processes(self, before: dict[str, int], what: str) -> None:
        """Every process of ``before`` not killed on purpose must still be that process."""
        by_name = {slot.name: slot for slot in self.slots}
        same, killed = [], []
        for name, pid in before.items():
            slot = by_name[name]
            if pid in self.events.killed:
                killed.append(f"{name} (pid {pid})")
            elif slot.pid == pid and slot.alive():
                same.append(f"{name} (pid {pid})")
            else:
                self.events.casualties.append(
                    f"{name} (pid {pid}) did not survive {what}: now pid {slot.pid}"
                )
        line = f"after {what}: the same processes, alive: {', '.join(same) or 'none'}"
        if killed:
            line += f"; killed on purpose meanwhile: {', '.join(killed)}"
        self.events.survival_checks.append(line)
        self.events.note(self.started, line)

    async def pg_restart(self) -> None:
        """Restart the server under every process; none of them may die of it."""
        mode = self.args.pg_restart_mode
        self.kills_paused = True
        try:
            before = {slot.name: slot.pid for slot in self.slots if slot.alive() and slot.pid}
            self.events.note(self.started, f"PostgreSQL restart (pg_ctl restart -m {mode})")
            down = time.time()
            seconds = await asyncio.to_thread(self.pg.restart, mode)
            up = time.time()
            self.events.pg_restarts += 1
            self.events.pg_restart_seconds += seconds
            self.events.pg_restart_windows.append((down, up))
            self.events.note(self.started, f"PostgreSQL accepting connections after {seconds:.2f}s")
            await asyncio.sleep(self.args.settle)
            self.check_same_processes(before, "the PostgreSQL restart")
        finally:
            self.kills_paused = False

    async def pick_cut_target(self) -> Slot:
        """A consuming worker running tasks, none of them blocking its loop right now."""
        candidates = [w for w in self.workers if w.serving_for() is not None] or [
            w for w in self.workers if w.alive()
        ]
        busy: dict[int, tuple[int, int]] = {}
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.pg.dsn(DB_NAME), timeout=5)
            try:
                rows = await conn.fetch(
                    "SELECT pid, count(*) FILTER (WHERE block_seconds = 0) AS normal,"
                    " count(*) FILTER (WHERE block_seconds > 0) AS blocking"
                    " FROM chaos_runs WHERE finished_at IS NULL GROUP BY pid"
                )
                busy = {row["pid"]: (row["normal"], row["blocking"]) for row in rows}
            finally:
                await conn.close()

        def score(slot: Slot) -> tuple[bool, bool, int]:
            normal, blocking = busy.get(slot.pid or 0, (0, 0))
            return (blocking == 0, normal > 0, normal)

        return max(candidates, key=score)

    async def worker_pg_cut(self) -> None:
        """Cut one worker from PostgreSQL while the others go on; it must come through."""
        seconds = self.args.worker_pg_cut
        target = await self.pick_cut_target()
        self.spared.add(target.name)
        try:
            pid = target.pid
            proxy = self.db_proxies[target.name]
            cut_at = time.time()
            await proxy.cut()
            self.events.note(
                self.started,
                f"{target.name} (pid {pid}) cut from PostgreSQL for {seconds:g}s (its proxy)",
            )
            await asyncio.sleep(seconds)
            await proxy.restore()
            restored_at = time.time()
            self.events.worker_pg_cuts += 1
            self.events.worker_pg_cut_seconds += seconds
            if pid is not None:
                self.events.pg_cut_windows.append((pid, cut_at, restored_at))
            self.events.note(self.started, f"{target.name} reaches PostgreSQL again")
            await asyncio.sleep(self.args.settle)
            if pid is not None:
                self.check_same_processes({target.name: pid}, "its PostgreSQL cut")
        finally:
            self.spared.discard(target.name)

    async def api_crash(self) -> None:
        if self.api is None:
            return
        self.down_on_purpose.add(self.api.name)
        try:
            pid = self.api.pid
            killed_at = self.api.kill()
            if pid is not None:
                self.events.killed[pid] = killed_at
            self.events.api_kills += 1
            self.events.note(self.started, f"kill -9 api (pid {pid})")
            await asyncio.sleep(0.5)
            self.api.start()
        finally:
            self.down_on_purpose.discard(self.api.name)
        self.events.note(self.started, f"api started again (pid {self.api.pid})")
        await self.wait_api(60)
        self.events.note(self.started, "api answering again")

    async def rabbit_outage(self) -> None:
        seconds = self.args.rabbit_outage
        await self.amqp_proxy.cut()
        self.events.rabbit_outages += 1
        self.events.rabbit_outage_seconds += seconds
        self.events.note(
            self.started, f"RabbitMQ 'stopped' for {seconds:g}s (proxy cut, connections reset)"
        )
        await asyncio.sleep(seconds)
        await self.amqp_proxy.restore()
        self.events.note(self.started, "RabbitMQ 'back' (proxy listening again)")

    # -- drain and verdict -------------------------------------------------------
    async def status_counts(self, conn: Any) -> dict[str, int]:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM krolik_tasks GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    async def drain(self) -> float:
        """Wait until every task is final (bounded); returns the seconds it took."""
        began = time.monotonic()
        deadline = began + self.args.timeout
        last_report = 0.0
        conn = await asyncpg.connect(self.pg.dsn(DB_NAME), timeout=10)
        try:
            while True:
                for slot in self.slots:
                    slot.restart_if_dead()
                counts = await self.status_counts(conn)
                open_tasks = counts.get("pending", 0) + counts.get("processing", 0)
                in_db = sum(counts.values())
                now = time.monotonic()
                if now - last_report >= 10:
                    say(f"draining: {dict(sorted(counts.items()))}")
                    last_report = now
                if open_tasks == 0 and in_db >= len(self.submission.accepted):
                    return now - began
                if now >= deadline:
                    say(f"gave up waiting after {self.args.timeout:g}s: {counts}")
                    return now - began
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    def log_events(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for path in self.log_dir.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                event = record.get("event")
                if event == "tasks_redispatched":
                    counts[event] += int(record.get("count", 1))
                elif event in EVENTS:
                    counts[event] += 1
                if record.get("level") in ("error", "critical"):
                    counts["error_lines"] += 1
        return {name: counts[name] for name in (*EVENTS, "error_lines") if counts[name]}

    async def verdict(self, drain_seconds: float, submit_seconds: float) -> dict[str, Any]:
        conn = await asyncpg.connect(self.pg.dsn(DB_NAME), timeout=10)
        try:
            counts = await self.status_counts(conn)
            tasks = await conn.fetch(
                "SELECT id, status, attempts, idempotency_key, result->>'token' AS token"
                " FROM krolik_tasks"
            )
            completions = await conn.fetch(
                "SELECT task_id, count(*) AS n FROM chaos_completions GROUP BY task_id"
            )
            runs = await conn.fetch(
                "SELECT task_id, pid, token, block_seconds,"
                " extract(epoch FROM started_at)::float8 AS started,"
                " extract(epoch FROM finished_at)::float8 AS finished FROM chaos_runs"
            )
            # The stored result must be the token of one finished execution of that
            # very task, at the attempt the task records, by the worker that completed it.
            unmatched = await conn.fetchval(
                """
                SELECT count(*) FROM krolik_tasks t
                WHERE t.status = 'done' AND (
                    SELECT count(*) FROM chaos_runs r
                    WHERE r.token = t.result->>'token' AND r.task_id = t.id
                      AND r.finished_at IS NOT NULL AND r.attempt = t.attempts
                      AND r.worker_id = t.worker_id
                ) <> 1
                """
            )
            failed_errors = await conn.fetch(
                "SELECT error, count(*) AS n FROM krolik_tasks WHERE status = 'failed'"
                " GROUP BY error ORDER BY n DESC LIMIT 5"
            )
        finally:
            await conn.close()

        by_id = {row["id"]: row for row in tasks}
        keys = Counter(row["idempotency_key"] for row in tasks)
        accepted_ids = set(self.submission.accepted.values())
        blocking_ids = self.blocking_task_ids()
        completed = {row["task_id"]: row["n"] for row in completions}
        run_rows = [
            RunRow(
                task_id=row["task_id"],
                pid=row["pid"],
                token=row["token"],
                block_seconds=row["block_seconds"],
                started=row["started"],
                finished=row["finished"],
            )
            for row in runs
        ]
        run_counts = Counter(row.task_id for row in run_rows)
        recorded = {i: row["token"] for i, row in by_id.items() if row["token"] is not None}
        stalls = loop_stalls(run_rows)
        reruns = explain_reruns(run_rows, recorded, self.events, self.args.lease, stalls)
        blocking_reruns = explain_reruns(
            [row for row in run_rows if row.task_id in blocking_ids],
            recorded,
            self.events,
            self.args.lease,
            stalls,
        )
        lost = sorted(i for i in accepted_ids if i not in by_id)
        stuck = sorted(i for i, row in by_id.items() if row["status"] not in FINAL)
        failed = sorted(i for i, row in by_id.items() if row["status"] == "failed")
        finished_twice = sorted(i for i, n in completed.items() if n > 1)
        done_ids = {i for i, row in by_id.items() if row["status"] == "done"}
        done_without_completion = sorted(i for i in done_ids if completed.get(i, 0) == 0)
        unexpected_exits = sum(len(slot.unexpected_exits) for slot in self.slots)
        boots = [seconds for worker in self.workers for seconds in worker.boot_seconds]
        figures: dict[str, Any] = {
            "tasks_requested": self.args.tasks,
            "submitted": len(self.submission.accepted),
            "done": counts.get("done", 0),
            "failed": counts.get("failed", 0),
            "cancelled": counts.get("cancelled", 0),
            "lost": len(lost),
            "stuck": len(stuck),
            "finished_twice": len(finished_twice),
            "done_result_unmatched": int(unmatched),
            "done_without_completion_record": len(done_without_completion),
            "runs_executed_twice": reruns.tasks,
            "rerun_extra_runs": reruns.extra_runs,
            "rerun_explained_by_kill": reruns.by_kill,
            "rerun_explained_by_pg_cut": reruns.by_pg_cut,
            "rerun_explained_by_pg_restart": reruns.by_pg_restart,
            "rerun_claimed_before_loop_stall": reruns.claimed_before_stall,
            "rerun_unexplained": reruns.unexplained,
            "blocking_tasks": len(blocking_ids),
            "blocking_block_seconds": self.args.block_seconds,
            "blocking_done": len(blocking_ids & done_ids),
            "blocking_runs_executed_twice": blocking_reruns.tasks,
            "blocking_rerun_explained_by_kill": blocking_reruns.by_kill,
            "blocking_rerun_explained_by_outage": (
                blocking_reruns.by_pg_cut + blocking_reruns.by_pg_restart
            ),
            "blocking_rerun_claimed_before_loop_stall": blocking_reruns.claimed_before_stall,
            "blocking_rerun_unexplained": blocking_reruns.unexplained,
            "executions": len(run_rows),
            "executions_interrupted": sum(1 for row in run_rows if row.finished is None),
            "max_executions_per_task": max(run_counts.values(), default=0),
            "tasks_in_db": len(by_id),
            "tasks_in_db_not_acknowledged": len(set(by_id) - accepted_ids),
            "duplicate_tasks_per_key": sum(n - 1 for n in keys.values() if n > 1),
            "submit_given_up": self.submission.given_up,
            "submit_post_retries": self.submission.post_retries,
            "submit_idempotent_replays": self.submission.replayed,
            "worker_kills": self.events.worker_kills,
            "worker_kill_wait_seconds": round(self.events.kill_wait_seconds, 1),
            "worker_boot_seconds_median": round(statistics.median(boots), 2) if boots else None,
            "worker_boot_seconds_max": round(max(boots), 2) if boots else None,
            "api_kills": self.events.api_kills,
            "rabbit_outages": self.events.rabbit_outages,
            "rabbit_outage_seconds": self.events.rabbit_outage_seconds,
            "pg_restarts": self.events.pg_restarts,
            "pg_restart_mode": self.args.pg_restart_mode,
            "pg_restart_seconds": round(self.events.pg_restart_seconds, 2),
            "worker_pg_cuts": self.events.worker_pg_cuts,
            "worker_pg_cut_seconds": self.events.worker_pg_cut_seconds,
            "survival_checks": self.events.survival_checks,
            "did_not_survive": self.events.casualties,
            "unexpected_exits": unexpected_exits,
            "workers": self.args.workers,
            "concurrency": self.args.concurrency,
            "lease_seconds": self.args.lease,
            "heartbeat_seconds": self.args.heartbeat,
            "submit_seconds": round(submit_seconds, 1),
            "drain_seconds": round(drain_seconds, 1),
            "wall_seconds": round(time.monotonic() - self.wall_started, 1),
            "log_events": self.log_events(),
            "failed_errors": {row["error"]: row["n"] for row in failed_errors},
            "examples": {
                "lost": lost[:10],
                "stuck": stuck[:10],
                "failed": failed[:10],
                "finished_twice": finished_twice[:10],
                "rerun_unexplained": reruns.unexplained_tasks[:10],
            },
            "rerun_unexplained_runs": self.describe_runs(reruns.unexplained_tasks[:10], run_rows),
            "rerun_claimed_before_loop_stall_runs": self.describe_runs(
                reruns.stall_tasks[:5], run_rows
            ),
            "most_executed_task": self.describe_runs(
                [max(run_counts, key=lambda i: run_counts[i])] if run_counts else [], run_rows
            ),
        }
        must_be_zero = (
            "lost",
            "stuck",
            "failed",
            "finished_twice",
            "done_result_unmatched",
            "done_without_completion_record",
            "rerun_claimed_before_loop_stall",
            "rerun_unexplained",
            "blocking_rerun_claimed_before_loop_stall",
            "blocking_rerun_unexplained",
            "submit_given_up",
            "duplicate_tasks_per_key",
            "unexpected_exits",
        )
        figures["failures"] = [name for name in must_be_zero if figures[name]]
        if figures["submitted"] != self.args.tasks:
            figures["failures"].append("submitted")
        if figures["did_not_survive"]:
            figures["failures"].append("did_not_survive")
        figures["ok"] = not figures["failures"]
        return figures

    def blocking_task_ids(self) -> set[int]:
        """The task ids the API gave the loop-blocking submissions."""
        accepted = self.submission.accepted
        return {accepted[i] for i in self.blocking if i in accepted}

    def describe_runs(self, task_ids: list[int], runs: list[RunRow]) -> dict[str, list[str]]:
        """Each run of these tasks: which process, when (seconds into the chaos), and what
        this script did to that process, to see why a task ran again."""
        names = {proc.pid: slot.name for slot in self.slots for proc in slot.history}
        blocking = self.blocking_task_ids()

        def at(epoch: float | None) -> str:
            return "-" if epoch is None else f"{epoch - self.started_epoch:.2f}"

        described: dict[str, list[str]] = {}
        for task_id in task_ids:
            lines = []
            for run in sorted((r for r in runs if r.task_id == task_id), key=lambda r: r.started):
                killed = self.events.killed.get(run.pid)
                who = f"{names.get(run.pid, '?')} pid {run.pid}"
                line = f"{who}: {at(run.started)}..{at(run.finished)}"
                lines.append(line + (f", killed at {at(killed)}" if killed is not None else ""))
            described[f"{task_id}{' (blocking)' if task_id in blocking else ''}"] = lines
        return described

    # -- clean-up ----------------------------------------------------------------
    def stop_processes(self) -> None:
        for slot in self.slots:
            slot.kill_all()

    async def clean_up(self, keep: bool) -> None:
        self.stop_processes()
        for proxy in (self.amqp_proxy, *self.db_proxies.values()):
            with contextlib.suppress(Exception):
                await proxy.stop()
        topology = Topology.from_settings(self.rabbit, "default")
        try:
            connection = await aio_pika.connect(self.amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                for name in (topology.queue("default").name, topology.dead_letter_queue):
                    await channel.queue_delete(name)
                for exchange in (topology.exchange, topology.dead_letter_exchange):
                    await channel.exchange_delete(exchange)
        except Exception as exc:
            say(f"could not delete the RabbitMQ queues/exchanges: {exc!r}")
        self.stop_pg(keep)

    def stop_pg(self, keep: bool) -> None:
        """Stop the private server (and remove it unless kept); safe to call again."""
        base = self.pg.base
        if not self.pg.running and (keep or base is None):
            return
        try:
            self.pg.stop(remove=not keep)
        except Exception as exc:
            say(f"could not stop the private PostgreSQL in {base}: {exc!r}")
            return
        if keep and base is not None:
            say(f"kept the PostgreSQL folder {base} (stopped)")


def print_figures(figures: dict[str, Any], events: Events) -> None:
    say("timeline:")
    for line in events.timeline:
        print(f"    {line}")
    f = figures
    rows = [
        ("submitted", f["submitted"]),
        ("done", f["done"]),
        ("failed", f["failed"]),
        ("cancelled", f["cancelled"]),
        ("lost", f["lost"]),
        ("stuck", f["stuck"]),
        ("finished-twice", f["finished_twice"]),
        ("done, result from no single finished run", f["done_result_unmatched"]),
        (
            "runs executed twice (tasks / extra runs)",
            f"{f['runs_executed_twice']} / {f['rerun_extra_runs']}",
        ),
        (
            "  extra runs explained by kill / pg cut / pg restart",
            f"{f['rerun_explained_by_kill']} / {f['rerun_explained_by_pg_cut']}"
            f" / {f['rerun_explained_by_pg_restart']}",
        ),
        (
            "  extra runs unexplained (of them: claimed before a loop stall)",
            f"{f['rerun_unexplained'] + f['rerun_claimed_before_loop_stall']}"
            f" ({f['rerun_claimed_before_loop_stall']})",
        ),
        (
            "loop-blocking tasks (done; re-run)",
            f"{f['blocking_tasks']} x {f['blocking_block_seconds']:g}s"
            f" ({f['blocking_done']}; {f['blocking_runs_executed_twice']})",
        ),
        (
            "  their extra runs: kill / outage / unexplained (of them: stall)",
            f"{f['blocking_rerun_explained_by_kill']} / {f['blocking_rerun_explained_by_outage']}"
            f" / {f['blocking_rerun_unexplained'] + f['blocking_rerun_claimed_before_loop_stall']}"
            f" ({f['blocking_rerun_claimed_before_loop_stall']})",
        ),
        (
            "handler executions (interrupted)",
            f"{f['executions']} ({f['executions_interrupted']})",
        ),
        (
            "worker kills (waited for a serving worker)",
            f"{f['worker_kills']} ({f['worker_kill_wait_seconds']:g}s)",
        ),
        (
            "worker boot to consuming, median / max",
            f"{f['worker_boot_seconds_median']}s / {f['worker_boot_seconds_max']}s",
        ),
        ("api kills", f["api_kills"]),
        ("rabbit outages", f"{f['rabbit_outages']} ({f['rabbit_outage_seconds']:g}s, proxy)"),
        (
            "postgres restarts",
            f"{f['pg_restarts']} (-m {f['pg_restart_mode']}, {f['pg_restart_seconds']:g}s)",
        ),
        ("worker postgres cuts", f"{f['worker_pg_cuts']} ({f['worker_pg_cut_seconds']:g}s)"),
        ("processes that died by themselves", f["unexpected_exits"]),
        ("processes that did not survive an outage", len(f["did_not_survive"])),
        (
            "submit / drain / wall seconds",
            f"{f['submit_seconds']} / {f['drain_seconds']} / {f['wall_seconds']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print("", flush=True)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for line in f["survival_checks"]:
        print(f"  {line}")
    for line in f["did_not_survive"]:
        print(f"  DID NOT SURVIVE: {line}")
    titles = (
        ("unexplained re-run", "rerun_unexplained_runs"),
        ("re-run claimed before a loop stall", "rerun_claimed_before_loop_stall_runs"),
        ("most runs", "most_executed_task"),
    )
    for title, key in titles:
        for task, lines in f[key].items():
            print(f"  {title}: task {task}: {'; '.join(lines)}")
    print(f"  log events: {f['log_events']}")
    if f["failed_errors"]:
        print(f"  failed because: {f['failed_errors']}")
    verdict = "OK" if f["ok"] else f"FAILED ({', '.join(f['failures'])})"
    print(f"  verdict: {verdict}\n", flush=True)
    print(json.dumps(f, sort_keys=True), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    add = parser.add_argument
    add("--tasks", type=int, default=10_000)
    add("--workers", type=int, default=3)
    add("--concurrency", type=int, default=4, help="tasks at once per worker")
    add(
        "--duration",
        type=float,
        default=120.0,
        help="seconds over which tasks are submitted and the chaos goes on",
    )
    add("--kill-interval", type=float, default=2.0, help="seconds between worker kills; 0: none")
    add(
        "--min-uptime",
        type=float,
        default=1.0,
        help="seconds a worker has been consuming before it may be killed",
    )
    add("--api-kill-at", type=float, default=0.45, help="fraction of --duration; <0: none")
    add("--rabbit-outage", type=float, default=5.0, help="seconds; 0: none")
    add("--rabbit-outage-at", type=float, default=0.6, help="fraction of --duration")
    add("--pg-restart-at", type=float, default=0.2, help="fraction of --duration; <0: none")
    add("--pg-restart-mode", choices=RESTART_MODES, default="fast")
    add("--worker-pg-cut", type=float, default=10.0, help="seconds one worker is cut; 0: none")
    add("--worker-pg-cut-at", type=float, default=0.75, help="fraction of --duration")
    add(
        "--settle",
        type=float,
        default=5.0,
        help="seconds after a restart or cut before checking the processes survived it",
    )
    add("--max-sleep-ms", type=float, default=200.0, help="each handler asyncio.sleeps 0..this")
    add("--blocking-share", type=float, default=0.02, help="share of loop-blocking tasks")
    add(
        "--block-seconds",
        type=float,
        default=None,
        help="how long a blocking task blocks the loop (time.sleep); default 3 leases",
    )
    add(
        "--max-attempts",
        type=int,
        default=100,
        help="sent with each task: kills cost attempts, and no task may end failed",
    )
    add("--submitters", type=int, default=16, help="concurrent HTTP POSTs")
    add("--lease", type=float, default=2.0, help="APP__WORKER__LEASE_SECONDS")
    add("--heartbeat", type=float, default=0.3, help="APP__WORKER__HEARTBEAT_SECONDS")
    add("--rescue-interval", type=float, default=0.5)
    add("--redispatch-after", type=float, default=30.0)
    add("--timeout", type=float, default=900.0, help="max seconds to wait for every task final")
    add("--pg-bin", default=str(DEFAULT_BIN), help="PostgreSQL binaries (initdb, pg_ctl)")
    add("--seed", type=int, default=None)
    add("--keep", action="store_true", help="keep the PostgreSQL folder and the process logs")
    args = parser.parse_args(argv)
    if args.block_seconds is None:
        args.block_seconds = 3 * args.lease
    return args


async def main_async(chaos: Chaos) -> int:
    args = chaos.args
    say(
        f"run {chaos.run}: {args.tasks} tasks ({len(chaos.blocking)} blocking the loop for "
        f"{args.block_seconds:g}s), {args.workers} workers x {args.concurrency}, "
        f"lease {args.lease:g}s, queue {chaos.rabbit.queue_name}, logs {chaos.log_dir}"
    )
    say(
        "RabbitMQ is not really stopped: every Krolik process talks AMQP through this "
        "script's TCP proxy, which is cut for the outage"
    )
    figures: dict[str, Any] | None = None
    try:
        await chaos.set_up()
        say(
            f"private PostgreSQL on 127.0.0.1:{chaos.pg.port} ({chaos.pg.base}); "
            f"api on {chaos.api_url}; AMQP proxy on 127.0.0.1:{chaos.amqp_proxy.port}; "
            "worker PostgreSQL proxies on "
            + ", ".join(f"{name} :{proxy.port}" for name, proxy in chaos.db_proxies.items())
        )
        chaos.started, chaos.started_epoch = time.monotonic(), time.time()
        submitted = asyncio.create_task(chaos.submit_all())
        chaos_loop = asyncio.create_task(chaos.chaos(submitted))
        try:
            done, _ = await asyncio.wait(
                {submitted, chaos_loop}, return_when=asyncio.FIRST_EXCEPTION
            )
            for job in done:
                job.result()  # the chaos went wrong: stop here, not after the submission
            await submitted
            submit_seconds = chaos.submission.seconds
            say(f"submitted {len(chaos.submission.accepted)} tasks in {submit_seconds:.1f}s")
            await chaos_loop
        finally:
            for job in (submitted, chaos_loop):
                job.cancel()
        say("chaos over; waiting until every task is final")
        drain_seconds = await chaos.drain()
        figures = await chaos.verdict(drain_seconds, submit_seconds)
        print_figures(figures, chaos.events)
        return 0 if figures["ok"] else 1
    finally:
        await chaos.clean_up(keep=args.keep)
        suspicious = figures is not None and (
            figures["rerun_unexplained"] or figures["rerun_claimed_before_loop_stall"]
        )
        if args.keep or figures is None or not figures["ok"] or suspicious:
            say(f"process logs kept in {chaos.log_dir}")
        else:
            shutil.rmtree(chaos.log_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chaos = Chaos(args)
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(main_async(chaos))

    def interrupted() -> None:
        if not main_task.cancelling():  # a second signal must not cut the clean-up short
            main_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, interrupted)
    try:
        return loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        say("interrupted; cleaned up")
        return 130
    finally:
        # Whatever happened above: no Krolik process and no PostgreSQL server outlives us.
        chaos.stop_processes()
        chaos.stop_pg(args.keep)
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
