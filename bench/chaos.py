#!/usr/bin/env python
"""Chaos run: real Krolik processes, killed and cut off while they work; nothing may be lost.

    python bench/chaos.py                       # 2,000 tasks, 3 workers, ~40 s of chaos
    python bench/chaos.py --tasks 100 --duration 8 --kill-interval 1 --rabbit-outage 2

What it does
  * creates a throwaway database on the configured PostgreSQL server
    (``APP__DB__URL``, default the local one), runs ``krolik migrate`` on it and adds
    two side tables: ``chaos_runs`` (one row per handler execution, written by the
    handler in ``bench/chaos_handlers.py``) and ``chaos_completions`` (one row per
    transition of a task to ``done``, written by a trigger *in the same transaction*
    as Krolik's completion, so it counts recorded completions, not executions);
  * starts one ``krolik api`` (its outbox relay inside) and ``--workers`` ``krolik
    worker`` subprocesses on uuid-named RabbitMQ queue/exchange (classic queues);
  * submits ``--tasks`` tasks over ``--duration`` seconds by HTTP POST, each with
    an idempotency key and retried until the API answers, as a careful client would;
  * meanwhile: kills (-9) one random worker every ``--kill-interval`` seconds and
    restarts it; kills (-9) the API once and restarts it; and "stops RabbitMQ" for
    ``--rabbit-outage`` seconds once.

RabbitMQ is NOT really stopped: the server is shared and must stay up. Every Krolik
process reaches RabbitMQ through a TCP proxy that this script owns; the outage
closes the proxy's listener and aborts every open AMQP connection (the processes
see their connections reset and new connections refused), then listens again.

At the end it waits (at most ``--timeout`` seconds) until every task is final and
prints the figures, then one JSON line with all of them. It exits 1 if any task was
lost (accepted by the API but not in the database), stuck (still pending or
processing), finished twice (more than one completion recorded), or done with a
result that no finished execution produced; 0 otherwise. It cleans up its database,
queues and exchanges (``--keep`` keeps the database and the process logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy.engine import make_url

from krolik.broker.topology import Topology
from krolik.settings import QueueType, RabbitMQSettings

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_DB_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
FINAL = ("done", "failed", "cancelled")
# Worker log events worth counting (structlog JSON lines, key "event").
EVENTS = (
    "task_rescued",
    "tasks_redispatched",
    "task_released",
    "task_result_discarded",
    "lease_lost",
    "task_abandoned",
    "outcome_not_recorded",
    "task_run_crashed",
    "claim_failed",
    "heartbeat_failed",
    "relay_publish_failed",
    "relay_broker_unavailable",
    "broker_unavailable",
    "waiting_for_service",
)

SIDE_TABLES = """
CREATE TABLE chaos_runs (
    id          bigserial PRIMARY KEY,
    task_id     bigint      NOT NULL,
    attempt     integer     NOT NULL,
    worker_id   text        NOT NULL,
    pid         integer     NOT NULL,
    token       text        NOT NULL UNIQUE,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
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
    """Linux: a child gets SIGKILL if this script dies, so no worker outlives the run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- the "RabbitMQ outage" proxy -----------------------------------------------------
class OutageProxy:
    """Forwards 127.0.0.1:<port> to RabbitMQ; ``cut()`` drops every connection and
    refuses new ones until ``restore()`` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    restore = start

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()
            self._writers.discard(dst)


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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 by PID, and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart_if_dead(self) -> bool:
        """A process that died without being killed by us is recorded and restarted."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits.append(self.proc.returncode)
            say(f"{self.name} exited by itself (code {self.proc.returncode}); restarting")
            self.start()
            return True
        return False

    def kill_all(self) -> None:
        for proc in self.history:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the run -------------------------------------------------------------------------
@dataclass
class Submission:
    accepted: dict[int, int] = field(default_factory=dict)  # index -> task id
    replayed: int = 0  # 200: the idempotency key was already committed
    post_retries: int = 0
    given_up: int = 0


@dataclass
class Events:
    worker_kills: int = 0
    api_kills: int = 0
    rabbit_outages: int = 0
    rabbit_outage_seconds: float = 0.0
    timeline: list[str] = field(default_factory=list)

    def note(self, started: float, what: str) -> None:
        line = f"t+{time.monotonic() - started:5.1f}s {what}"
        self.timeline.append(line)
        say(line)


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.run = uuid.uuid4().hex[:10]
        self.db_url = make_url(os.environ.get("APP__DB__URL", DEFAULT_DB_URL))
        self.amqp_url = os.environ.get("APP__RABBITMQ__URL", DEFAULT_AMQP_URL)
        self.db_name = f"krolik_chaos_{self.run}"
        self.chaos_db_url = self.db_url.set(database=self.db_name)
        self.rabbit = RabbitMQSettings(
            url=self.amqp_url,
            queue_name=f"krolik_chaos_{self.run}",
            exchange_name=f"krolik_chaos_{self.run}",
            routing_key=f"krolik.chaos.{self.run}",
            queue_type=QueueType.CLASSIC,
        )
        amqp = urlsplit(self.amqp_url)
        self.proxy = OutageProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"krolik-chaos-{self.run}-"))
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.slots: list[Slot] = []
        self.api: Slot | None = None
        self.workers: list[Slot] = []
        self.submission = Submission()
        self.events = Events()
        self.started = time.monotonic()
        self.db_created = False

    # -- set-up ------------------------------------------------------------------
    def _pg_connect_args(self, database: str) -> dict[str, Any]:
        url = self.db_url
        return {
            "host": url.host or "127.0.0.1",
            "port": url.port or 5432,
            "user": url.username or "postgres",
            "password": url.password,
            "database": database,
            "timeout": 10,
        }

    def _proxied_amqp_url(self) -> str:
        parts = urlsplit(self.amqp_url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}127.0.0.1:{self.proxy.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def krolik_env(self) -> dict[str, str]:
        a = self.args
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])
                ),
                "APP__DB__URL": self.chaos_db_url.render_as_string(hide_password=False),
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
                "CHAOS_RUNS_DSN": self.chaos_db_url.set(drivername="postgresql").render_as_string(
                    hide_password=False
                ),
                "CHAOS_MAX_SLEEP_MS": str(a.max_sleep_ms),
            }
        )
        return env

    async def set_up(self) -> None:
        admin = await asyncpg.connect(**self._pg_connect_args(self.db_url.database or "postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{self.db_name}"')
            self.db_created = True
        finally:
            await admin.close()
        env = self.krolik_env()
        migrate = Slot("migrate", ["migrate"], env, self.log_dir)
        migrate.start()
        assert migrate.proc is not None
        code = await asyncio.to_thread(migrate.proc.wait, 120)
        if code != 0:
            raise RuntimeError(f"krolik migrate failed ({code}); see {self.log_dir}")
        conn = await asyncpg.connect(**self._pg_connect_args(self.db_name))
        try:
            await conn.execute(SIDE_TABLES)
        finally:
            await conn.close()
        await self.proxy.start()
        self.api = Slot(
            "api",
            ["api", "--host", "127.0.0.1", "--port", str(self.api_port)],
            env,
            self.log_dir,
        )
        self.workers = [
            Slot(
                f"worker{n}",
                ["worker", "--app", "chaos_handlers", "--concurrency", str(self.args.concurrency)],
                env,
                self.log_dir,
            )
            for n in range(1, self.args.workers + 1)
        ]
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
    async def submit_all(self) -> None:
        a = self.args
        gap = a.duration / max(a.tasks, 1)
        gate = asyncio.Semaphore(a.submitters)
        limits = httpx.Limits(max_connections=a.submitters, max_keepalive_connections=a.submitters)
        give_up_at = self.started + a.duration + 120
        async with httpx.AsyncClient(timeout=5, limits=limits) as client:

            async def submit(index: int) -> None:
                body = {
                    "name": "chaos",
                    "payload": {"i": index},
                    "idempotency_key": f"chaos-{self.run}-{index}",
                    "max_attempts": a.max_attempts,
                }
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
            for index in range(a.tasks):
                delay = self.started + index * gap - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                job = asyncio.create_task(submit(index))
                pending.add(job)
                job.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    # -- chaos -------------------------------------------------------------------
    def pick_victim(self) -> Slot:
        """A random worker among those up for a while (likely mid-task), else the oldest."""
        settled = [
            w for w in self.workers if time.monotonic() - w.started_at >= self.args.kill_interval
        ]
        if settled:
            return self.rng.choice(settled)
        return min(self.workers, key=lambda w: w.started_at)

    async def chaos(self, submitted: asyncio.Task[None]) -> None:
        a = self.args
        api_kill_at = self.started + a.duration * a.api_kill_at
        outage_at = self.started + a.duration * a.rabbit_outage_at
        next_kill = self.started + a.kill_interval
        side_events: list[asyncio.Task[None]] = []
        api_killed = outage_done = False
        while time.monotonic() < self.started + a.duration or not submitted.done():
            now = time.monotonic()
            if now >= next_kill and a.kill_interval > 0:
                victim = self.pick_victim()
                pid = victim.proc.pid if victim.proc else None
                victim.kill()
                self.events.worker_kills += 1
                victim.start()
                self.events.note(self.started, f"kill -9 {victim.name} (pid {pid}); restarted")
                next_kill = now + a.kill_interval
            if not api_killed and now >= api_kill_at and a.api_kill_at >= 0:
                api_killed = True
                side_events.append(asyncio.create_task(self.api_crash()))
            if not outage_done and now >= outage_at and a.rabbit_outage > 0:
                outage_done = True
                side_events.append(asyncio.create_task(self.rabbit_outage()))
            for slot in self.workers:
                slot.restart_if_dead()
            await asyncio.sleep(0.05)
        await asyncio.gather(*side_events)

    async def api_crash(self) -> None:
        if self.api is None:
            return
        pid = self.api.proc.pid if self.api.proc else None
        self.api.kill()
        self.events.api_kills += 1
        self.events.note(self.started, f"kill -9 api (pid {pid})")
        await asyncio.sleep(0.5)
        self.api.start()
        self.events.note(self.started, "api started again")
        await self.wait_api(60)
        self.events.note(self.started, "api answering again")

    async def rabbit_outage(self) -> None:
        seconds = self.args.rabbit_outage
        await self.proxy.cut()
        self.events.rabbit_outages += 1
        self.events.rabbit_outage_seconds += seconds
        self.events.note(
            self.started, f"RabbitMQ 'stopped' for {seconds:g}s (proxy cut, connections reset)"
        )
        await asyncio.sleep(seconds)
        await self.proxy.restore()
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
        conn = await asyncpg.connect(**self._pg_connect_args(self.db_name))
        try:
            while True:
                for slot in self.slots:
                    slot.restart_if_dead()
                counts = await self.status_counts(conn)
                open_tasks = counts.get("pending", 0) + counts.get("processing", 0)
                in_db = sum(counts.values())
                now = time.monotonic()
                if now - last_report >= 5:
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
        return {name: counts.get(name, 0) for name in (*EVENTS, "error_lines")}

    async def verdict(self, drain_seconds: float, submit_seconds: float) -> dict[str, Any]:
        conn = await asyncpg.connect(**self._pg_connect_args(self.db_name))
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
                "SELECT task_id, count(*) AS n, count(finished_at) AS finished"
                " FROM chaos_runs GROUP BY task_id"
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
            executions = await conn.fetchval("SELECT count(*) FROM chaos_runs")
            unfinished_executions = await conn.fetchval(
                "SELECT count(*) FROM chaos_runs WHERE finished_at IS NULL"
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
        completed = {row["task_id"]: row["n"] for row in completions}
        run_counts = {row["task_id"]: row["n"] for row in runs}
        lost = sorted(i for i in accepted_ids if i not in by_id)
        stuck = sorted(i for i, row in by_id.items() if row["status"] not in FINAL)
        finished_twice = sorted(i for i, n in completed.items() if n > 1)
        done_ids = {i for i, row in by_id.items() if row["status"] == "done"}
        done_without_completion = sorted(i for i in done_ids if completed.get(i, 0) == 0)
        reruns = sorted(i for i, n in run_counts.items() if n > 1)
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
            "rerun_after_kill_allowed": len(reruns),
            "executions": int(executions),
            "executions_interrupted": int(unfinished_executions),
            "max_executions_per_task": max(run_counts.values(), default=0),
            "tasks_in_db": len(by_id),
            "tasks_in_db_not_acknowledged": len(set(by_id) - accepted_ids),
            "duplicate_tasks_per_key": sum(n - 1 for n in keys.values() if n > 1),
            "submit_given_up": self.submission.given_up,
            "submit_post_retries": self.submission.post_retries,
            "submit_idempotent_replays": self.submission.replayed,
            "worker_kills": self.events.worker_kills,
            "api_kills": self.events.api_kills,
            "rabbit_outages": self.events.rabbit_outages,
            "rabbit_outage_seconds": self.events.rabbit_outage_seconds,
            "unexpected_exits": sum(len(slot.unexpected_exits) for slot in self.slots),
            "workers": self.args.workers,
            "concurrency": self.args.concurrency,
            "lease_seconds": self.args.lease,
            "submit_seconds": round(submit_seconds, 1),
            "drain_seconds": round(drain_seconds, 1),
            "total_seconds": round(time.monotonic() - self.started, 1),
            "log_events": self.log_events(),
            "failed_errors": {row["error"]: row["n"] for row in failed_errors},
            "examples": {
                "lost": lost[:10],
                "stuck": stuck[:10],
                "finished_twice": finished_twice[:10],
            },
        }
        figures["ok"] = (
            figures["lost"] == 0
            and figures["stuck"] == 0
            and figures["finished_twice"] == 0
            and figures["done_result_unmatched"] == 0
            and figures["done_without_completion_record"] == 0
            and figures["submit_given_up"] == 0
            and figures["duplicate_tasks_per_key"] == 0
        )
        return figures

    # -- clean-up ----------------------------------------------------------------
    async def clean_up(self, keep_db: bool) -> None:
        for slot in self.slots:
            slot.kill_all()
        with contextlib.suppress(Exception):
            await self.proxy.cut()
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
        if keep_db:
            say(f"kept database {self.db_name}")
            return
        if self.db_created:
            try:
                admin = await asyncpg.connect(
                    **self._pg_connect_args(self.db_url.database or "postgres")
                )
                try:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                finally:
                    await admin.close()
            except Exception as exc:
                say(f"could not drop database {self.db_name}: {exc!r}")


def print_figures(figures: dict[str, Any], events: Events) -> None:
    say("timeline:")
    for line in events.timeline:
        print(f"    {line}")
    rows = [
        ("submitted", figures["submitted"]),
        ("done", figures["done"]),
        ("failed", figures["failed"]),
        ("lost", figures["lost"]),
        ("stuck", figures["stuck"]),
        ("finished-twice", figures["finished_twice"]),
        ("done, result from no single finished run", figures["done_result_unmatched"]),
        ("re-run after a kill (allowed)", figures["rerun_after_kill_allowed"]),
        (
            "handler executions (interrupted)",
            (f"{figures['executions']} ({figures['executions_interrupted']})"),
        ),
        (
            "worker kills / api kills / rabbit outages",
            (
                f"{figures['worker_kills']} / {figures['api_kills']} / {figures['rabbit_outages']}"
                f" ({figures['rabbit_outage_seconds']:g}s, via the proxy)"
            ),
        ),
        ("processes that died by themselves", figures["unexpected_exits"]),
        (
            "submit / drain / total seconds",
            (
                f"{figures['submit_seconds']} / {figures['drain_seconds']} / "
                f"{figures['total_seconds']}"
            ),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print("", flush=True)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"  log events: {figures['log_events']}")
    if figures["failed_errors"]:
        print(f"  failed because: {figures['failed_errors']}")
    print(f"  verdict: {'OK' if figures['ok'] else 'FAILED'}\n", flush=True)
    print(json.dumps(figures, sort_keys=True), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="tasks at once per worker")
    parser.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="seconds over which tasks are submitted and chaos goes on",
    )
    parser.add_argument("--kill-interval", type=float, default=2.0, help="0: no worker kills")
    parser.add_argument(
        "--api-kill-at", type=float, default=0.4, help="fraction of duration; <0: none"
    )
    parser.add_argument("--rabbit-outage", type=float, default=5.0, help="seconds; 0: none")
    parser.add_argument("--rabbit-outage-at", type=float, default=0.6, help="fraction")
    parser.add_argument("--max-sleep-ms", type=float, default=200.0)
    parser.add_argument("--max-attempts", type=int, default=5, help="sent with each task")
    parser.add_argument("--submitters", type=int, default=16, help="concurrent HTTP POSTs")
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--rescue-interval", type=float, default=0.5)
    parser.add_argument("--redispatch-after", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="max wait for final")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the database and logs")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    chaos = Chaos(args)
    say(
        f"run {chaos.run}: {args.tasks} tasks, {args.workers} workers x {args.concurrency}, "
        f"database {chaos.db_name}, queue {chaos.rabbit.queue_name}, logs {chaos.log_dir}"
    )
    say(
        "RabbitMQ is not really stopped: every Krolik process talks AMQP through this "
        "script's TCP proxy, which is cut for the outage"
    )
    figures: dict[str, Any] | None = None
    try:
        await chaos.set_up()
        say(f"api on {chaos.api_url}, AMQP proxy on 127.0.0.1:{chaos.proxy.port}")
        chaos.started = time.monotonic()
        submitted = asyncio.create_task(chaos.submit_all())
        chaos_loop = asyncio.create_task(chaos.chaos(submitted))
        await submitted
        submit_seconds = time.monotonic() - chaos.started
        say(f"submitted {len(chaos.submission.accepted)} tasks in {submit_seconds:.1f}s")
        await chaos_loop
        say("chaos over; waiting until every task is final")
        drain_seconds = await chaos.drain()
        figures = await chaos.verdict(drain_seconds, submit_seconds)
        print_figures(figures, chaos.events)
        return 0 if figures["ok"] else 1
    finally:
        await chaos.clean_up(keep_db=args.keep)
        if args.keep or figures is None or not figures["ok"]:
            say(f"process logs kept in {chaos.log_dir}")
        else:
            shutil.rmtree(chaos.log_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(main_async(args))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        return loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        say("interrupted; cleaned up")
        return 130
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
