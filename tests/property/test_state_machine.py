"""A Hypothesis state machine over the real PostgreSQL store, against a dict model.

Each example gets its own event loop and store on the run's database (tables
emptied), so the async store can be driven from Hypothesis's sync rules. The
model keeps, per task: status, attempts, owner, cancel flag, lease state and
the exact number of outbox rows ``krolik/store/sql.py`` promises:

* enqueue, retry, and every return to pending (retry_later, release, rescue)
  write exactly one outbox row in the same transaction;
* cancelling a pending task deletes its outbox rows;
* claim and the finishing transitions (complete, fail, mark_cancelled) leave
  the outbox alone: a row not yet relayed when the task was claimed stays (the
  relay publishes it, the claim by the receiving worker finds nothing to do);
* the relay deletes what it published; ``redispatch_stale`` writes one row for a
  due pending task that has none.

A run whose cancel was requested does not go back to pending: retry_later,
release and rescue end it ``cancelled`` (and dispatch nothing).

Stale actors (an old attempt, another worker) and refused transitions change
nothing at all: both tables, every column, are compared with the previous step.
A final task never changes again except through retry.

Hypothesis switches rules off at random per example (swarm testing), so every
example starts from a few tasks, some already claimed (``some_tasks``), and
related operations share one rule (``worker_acts``: heartbeat and the five ways
to finish a run; ``maintenance``: rescue, relay, redispatch) so that the steps
the interesting sequences need are not crowded out.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, func, select

from krolik.errors import InvalidTransition, TaskNotFound
from krolik.settings import DatabaseSettings
from krolik.states import FINAL_STATES, TaskStatus
from krolik.store.base import NewTask, RunRef
from krolik.store.postgres import PostgresTaskStore
from krolik.store.tables import outbox, tasks
from tests.conftest import pg_url

pytestmark = pytest.mark.integration

PENDING, PROCESSING = TaskStatus.PENDING, TaskStatus.PROCESSING
DONE, FAILED, CANCELLED = TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED
WORKERS = ("worker-a", "worker-b")
LEASES = (60.0, -60.0)  # a live lease, or one that is already over
FINISHES = ("complete", "fail", "retry_later", "mark_cancelled", "release")
TAMPERS = (None, "worker", "older", "newer")
MISSING_ID = 10**12
EXISTS = st.integers(min_value=0, max_value=7).map(bool)  # now and then: a missing task

Snapshot = tuple[dict[int, tuple[Any, ...]], list[tuple[Any, ...]]]

_database: str | None = None


@pytest.fixture(autouse=True)
def _run_database(pg_database: str) -> Iterator[None]:
    """Hand the run's migrated database to the state machine (it cannot take fixtures)."""
    global _database
    _database = pg_database
    yield
    _database = None


@dataclass
class Model:
    name: str
    status: TaskStatus
    attempts: int = 0
    max_attempts: int | None = None
    worker: str | None = None
    cancel_requested: bool = False
    lease_expired: bool = False
    outbox: int = 1
    published: bool = False
    """The relay published (and deleted) its outbox rows since it last became pending."""


def has_tasks(machine: TaskStoreMachine) -> bool:
    return bool(machine.model)


def has_refs(machine: TaskStoreMachine) -> bool:
    return bool(machine.issued)


class TaskStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert _database is not None, "the _run_database fixture did not run"
        self.loop = asyncio.new_event_loop()
        self.store = PostgresTaskStore.from_settings(
            DatabaseSettings(url=pg_url(_database), pool_size=2, max_overflow=0)
        )
        self.model: dict[int, Model] = {}
        self.issued: list[RunRef] = []
        """Every RunRef a claim handed out: current, or stale by now."""
        self.keys: dict[str, int] = {}
        self.frozen: dict[int, tuple[Any, ...]] = {}
        self.serial = 0
        self.last: Snapshot | None = None
        """Both tables as the last invariant check saw them, i.e. before the current step."""
        self.unchanged: str | None = None
        """Set by a step that must have changed nothing: the invariant check verifies it."""
        self.run(self._empty())

    # -- plumbing ------------------------------------------------------------------
    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self._empty())  # leave the run's database as the fixtures expect
            self.run(self.store.close())
        finally:
            self.loop.close()

    async def _empty(self) -> None:
        # DELETE, not TRUNCATE: the tables hold a handful of rows, and TRUNCATE costs
        # tens of milliseconds per example. Ids need not restart: the model uses them.
        async with self.store.engine.begin() as conn:
            await conn.execute(delete(outbox))
            await conn.execute(delete(tasks))

    async def _rows(self) -> tuple[dict[int, Any], list[Any]]:
        async with self.store.engine.connect() as conn:
            task_rows = (
                await conn.execute(
                    select(
                        tasks,
                        (tasks.c.lease_expires_at < func.clock_timestamp()).label("expired"),
                    ).order_by(tasks.c.id)
                )
            ).all()
            outbox_rows = (await conn.execute(select(outbox).order_by(outbox.c.id))).all()
        return {row.id: row for row in task_rows}, outbox_rows

    @staticmethod
    def snapshot(task_rows: dict[int, Any], outbox_rows: list[Any]) -> Snapshot:
        """Both tables, every column (minus the computed lease flag)."""
        return (
            {task_id: tuple(row)[:-1] for task_id, row in task_rows.items()},
            [tuple(row) for row in outbox_rows],
        )

    def expect_unchanged(self, why: str) -> None:
        self.unchanged = why

    def pick(self, data: st.DataObject, *preferred: TaskStatus) -> int:
        """A task id; three times in four one in a ``preferred`` state, if there is one."""
        ids = sorted(self.model)
        wanted = [i for i in ids if self.model[i].status in preferred]
        if wanted and data.draw(st.integers(min_value=0, max_value=3), label="prefer"):
            ids = wanted
        return data.draw(st.sampled_from(ids), label="task_id")

    def on_missing_task(self, action: str) -> None:
        with pytest.raises(TaskNotFound):
            self.run(getattr(self.store, action)(MISSING_ID))
        self.expect_unchanged(f"{action} of a missing task")

    def valid(self, ref: RunRef) -> bool:
        m = self.model.get(ref.task_id)
        return (
            m is not None
            and m.status is PROCESSING
            and m.attempts == ref.attempt
            and m.worker == ref.worker_id
        )

    def back_to_pending(self, m: Model) -> None:
        """processing -> pending with one new outbox row, or cancelled if that was asked."""
        m.worker = None
        m.lease_expired = False
        if m.cancel_requested:
            m.status = CANCELLED
        else:
            m.status = PENDING
            m.outbox += 1
            m.published = False

    @staticmethod
    def tampered(ref: RunRef, tamper: str | None) -> RunRef:
        if tamper == "worker":
            other = WORKERS[1] if ref.worker_id == WORKERS[0] else WORKERS[0]
            return replace(ref, worker_id=other)
        if tamper == "older":
            return replace(ref, attempt=ref.attempt - 1)
        if tamper == "newer":
            return replace(ref, attempt=ref.attempt + 1)
        return ref

    # -- producers and the API -----------------------------------------------------
    @initialize(data=st.data())
    def some_tasks(self, data: st.DataObject) -> None:
        """A few tasks, some of them claimed (checking the model after each)."""
        for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="tasks")):
            self.enqueue(data)
            self.store_matches_model()
        for _ in range(data.draw(st.integers(min_value=0, max_value=2), label="claims")):
            self.claim_task(data)
            self.store_matches_model()

    @rule(data=st.data())
    def enqueue(self, data: st.DataObject) -> None:
        max_attempts = data.draw(
            st.none() | st.integers(min_value=1, max_value=3), label="max_attempts"
        )
        key = data.draw(st.none() | st.sampled_from(["key-1", "key-2"]), label="key")
        self.serial += 1
        name = f"task-{self.serial}"
        new = NewTask(
            name=name,
            queue="default",
            payload={"n": self.serial},
            max_attempts=max_attempts,
            idempotency_key=key,
        )
        [enqueued] = self.run(self.store.enqueue([new]))
        if key is not None and key in self.keys:
            assert not enqueued.created
            assert enqueued.task.id == self.keys[key]
            self.expect_unchanged(f"enqueue with the known key {key}")
            return
        assert enqueued.created
        task = enqueued.task
        assert task.id not in self.model
        assert task.status is PENDING
        assert task.attempts == 0
        assert task.max_attempts == max_attempts
        self.model[task.id] = Model(name=name, status=PENDING, max_attempts=max_attempts)
        if key is not None:
            self.keys[key] = task.id

    @precondition(has_tasks)
    @rule(data=st.data(), exists=EXISTS)
    def request_cancel(self, data: st.DataObject, exists: bool) -> None:
        """The API's cancel: pending -> cancelled, processing -> cancel_requested."""
        if not exists:
            self.on_missing_task("cancel")
            return
        task_id = self.pick(data, PENDING, PROCESSING)
        m = self.model[task_id]
        if m.status.is_final:
            with pytest.raises(InvalidTransition):
                self.run(self.store.cancel(task_id))
            self.expect_unchanged(f"cancel of {m.status} task {task_id}")
            return
        task = self.run(self.store.cancel(task_id))
        if m.status is PENDING:
            m.status = CANCELLED
            m.outbox = 0
            assert task.status is CANCELLED
        else:
            m.cancel_requested = True
            assert task.status is PROCESSING
            assert task.cancel_requested

    @precondition(has_tasks)
    @rule(data=st.data(), exists=EXISTS)
    def retry(self, data: st.DataObject, exists: bool) -> None:
        """The API's retry: failed or cancelled -> pending with fresh attempts."""
        if not exists:
            self.on_missing_task("retry")
            return
        task_id = self.pick(data, FAILED, CANCELLED)
        m = self.model[task_id]
        if m.status not in (FAILED, CANCELLED):
            with pytest.raises(InvalidTransition):
                self.run(self.store.retry(task_id))
            self.expect_unchanged(f"retry of {m.status} task {task_id}")
            return
        task = self.run(self.store.retry(task_id))
        assert task.status is PENDING
        assert task.attempts == 0
        self.frozen.pop(task_id, None)
        m.status, m.attempts, m.cancel_requested = PENDING, 0, False
        m.lease_expired, m.published = False, False
        m.outbox += 1

    # -- workers -------------------------------------------------------------------
    @precondition(has_tasks)
    @rule(data=st.data())
    def claim_task(self, data: st.DataObject) -> None:
        task_id = self.pick(data, PENDING)
        worker = data.draw(st.sampled_from(WORKERS), label="worker")
        lease = data.draw(st.sampled_from(LEASES), label="lease")
        default_max = data.draw(st.integers(min_value=1, max_value=3), label="default_max")
        m = self.model[task_id]
        task = self.run(self.store.claim(task_id, worker, lease, default_max))
        if m.status is not PENDING:
            assert task is None
            self.expect_unchanged(f"claim of {m.status} task {task_id}")
            return
        assert task is not None
        m.status = PROCESSING
        m.attempts += 1
        m.worker = worker
        m.lease_expired = lease < 0
        if m.max_attempts is None:
            m.max_attempts = default_max
        assert task.status is PROCESSING
        assert task.attempts == m.attempts
        assert task.worker_id == worker
        assert task.max_attempts == m.max_attempts
        self.issued.append(RunRef(task_id=task_id, attempt=task.attempts, worker_id=worker))

    @precondition(has_tasks)
    @rule(data=st.data(), error=st.sampled_from(["no handler", "unknown name"]))
    def fail_unrunnable(self, data: st.DataObject, error: str) -> None:
        task_id = self.pick(data, PENDING)
        m = self.model[task_id]
        changed = self.run(self.store.fail_unrunnable(task_id, error))
        assert changed is (m.status is PENDING)
        if changed:
            m.status = FAILED
        else:
            self.expect_unchanged(f"fail_unrunnable of {m.status} task {task_id}")

    @precondition(has_refs)
    @rule(data=st.data())
    def worker_acts(self, data: st.DataObject) -> None:
        """A heartbeat, or complete / fail / retry_later / mark_cancelled / release with:

        the current run's own ref, a ref that differs from it in one field only, or a
        ref kept from any earlier claim (often stale by now).
        """
        action = data.draw(st.sampled_from(("heartbeat", *FINISHES)), label="action")
        if action == "heartbeat":
            self.heartbeat(data)
            return
        running = sorted(i for i, m in self.model.items() if m.status is PROCESSING)
        if running and data.draw(st.booleans(), label="current run"):
            task_id = data.draw(st.sampled_from(running), label="task_id")
            m = self.model[task_id]
            assert m.worker is not None
            ref = RunRef(task_id, m.attempts, m.worker)
            tamper = data.draw(st.sampled_from((None, None, *TAMPERS)), label="tamper")
        else:
            ref = data.draw(st.sampled_from(self.issued), label="ref")
            tamper = data.draw(st.sampled_from(TAMPERS), label="tamper")
        self.finish(action, self.tampered(ref, tamper))

    def heartbeat(self, data: st.DataObject) -> None:
        picked = data.draw(
            st.lists(st.tuples(st.sampled_from(self.issued), st.sampled_from(TAMPERS)), max_size=3),
            label="runs",
        )
        lease = data.draw(st.sampled_from(LEASES), label="lease")
        runs = [self.tampered(ref, tamper) for ref, tamper in picked]
        expected = {
            run.task_id: self.model[run.task_id].cancel_requested for run in runs if self.valid(run)
        }
        answer = self.run(self.store.heartbeat(runs, lease))
        assert answer == expected
        if not expected:
            self.expect_unchanged(f"heartbeat of stale runs {runs}")
        for task_id in expected:
            self.model[task_id].lease_expired = lease < 0

    def finish(self, action: str, ref: RunRef) -> None:
        expected = self.valid(ref)
        call = {
            "complete": lambda: self.store.complete(ref, {"ok": ref.attempt}),
            "fail": lambda: self.store.fail(ref, "boom", "Traceback: boom"),
            "retry_later": lambda: self.store.retry_later(ref, "again", None, 0),
            "mark_cancelled": lambda: self.store.mark_cancelled(ref),
            "release": lambda: self.store.release(ref),
        }[action]
        answer = self.run(call())
        if action in ("retry_later", "release"):  # where the task went, None if refused
            landed = None
            if expected:
                landed = CANCELLED if self.model[ref.task_id].cancel_requested else PENDING
            assert answer is landed, f"{action} with {ref}"
        else:
            assert answer is expected, f"{action} with {ref}"
        if not expected:
            self.expect_unchanged(f"stale {action} with {ref}")
            return
        m = self.model[ref.task_id]
        if action in ("complete", "fail", "mark_cancelled"):
            m.status = {"complete": DONE, "fail": FAILED, "mark_cancelled": CANCELLED}[action]
            m.lease_expired = False
            return
        if action == "release":
            m.attempts -= 1
        self.back_to_pending(m)

    # -- maintenance and relay -------------------------------------------------------
    @rule(data=st.data(), job=st.sampled_from(["rescue", "relay", "redispatch"]))
    def maintenance(self, data: st.DataObject, job: str) -> None:
        """The background loops (one rule, so they do not crowd out the workers)."""
        if job == "rescue":
            self.rescue_expired()
        elif job == "relay":
            self.relay(confirmed=data.draw(st.booleans(), label="confirmed"))
        else:
            self.redispatch()

    def rescue_expired(self) -> None:
        rescued = self.run(self.store.rescue_expired(100))
        due = {i: m for i, m in self.model.items() if m.status is PROCESSING and m.lease_expired}
        assert sorted(r.task_id for r in rescued) == sorted(due)
        for r in rescued:
            m = due[r.task_id]
            assert r.attempts == m.attempts
            if m.cancel_requested:
                expected_status = CANCELLED
            elif m.attempts >= (m.max_attempts or 1):
                expected_status = FAILED
            else:
                expected_status = PENDING
            assert r.status is expected_status, f"rescue of {r.task_id}: {m}"
            if expected_status is FAILED:
                m.status, m.worker, m.lease_expired = FAILED, None, False
            else:
                self.back_to_pending(m)

    def relay(self, confirmed: bool) -> None:
        """Claim every due outbox row; delete them (published) or give them back."""
        entries = self.run(self.store.claim_outbox(1000, 30))
        assert Counter(e.task_id for e in entries) == Counter(
            {i: m.outbox for i, m in self.model.items() if m.outbox}
        )
        for entry in entries:
            assert entry.name == self.model[entry.task_id].name
            assert entry.queue == "default"
        ids = [e.id for e in entries]
        if confirmed:
            self.run(self.store.delete_outbox(ids))
            for m in self.model.values():
                if m.outbox and m.status is PENDING:
                    m.published = True
                m.outbox = 0
        else:
            self.run(self.store.release_outbox(ids))

    def redispatch(self) -> None:
        count = self.run(self.store.redispatch_stale(0.0, 100))
        stale = [m for m in self.model.values() if m.status is PENDING and m.outbox == 0]
        assert count == len(stale)
        for m in stale:
            m.outbox, m.published = 1, False

    # -- invariants ------------------------------------------------------------------
    @invariant()
    def store_matches_model(self) -> None:
        task_rows, outbox_rows = self.run(self._rows())
        now = self.snapshot(task_rows, outbox_rows)
        if self.unchanged is not None:
            assert now == self.last, f"{self.unchanged} changed something"
        self.last, self.unchanged = now, None
        assert set(task_rows) == set(self.model)
        counts = Counter(row.task_id for row in outbox_rows)
        for task_id, m in self.model.items():
            row = task_rows[task_id]
            where = f"task {task_id}: {m} vs {row}"
            assert TaskStatus(row.status) is m.status, where
            assert row.attempts == m.attempts, where
            assert row.max_attempts == m.max_attempts, where
            assert row.cancel_requested is m.cancel_requested, where
            assert counts[task_id] == m.outbox, where
            if m.status is PROCESSING:
                assert row.worker_id == m.worker, where
                assert row.lease_expires_at is not None, where
                assert row.expired is m.lease_expired, where
                assert row.started_at is not None, where
            else:
                assert row.lease_expires_at is None, where
            if m.status is PENDING:
                # every way into pending dispatches the task; only a publish empties it
                assert m.published or counts[task_id] >= 1, where
                assert not m.cancel_requested, where
            if m.status in FINAL_STATES:
                assert row.finished_at is not None, where
                # a final task never changes again, except through retry
                columns = now[0][task_id]
                assert self.frozen.setdefault(task_id, columns) == columns, where
            else:
                assert row.finished_at is None, where
                assert task_id not in self.frozen, where
        for row in outbox_rows:
            assert row.name == task_rows[row.task_id].name
            assert row.queue == task_rows[row.task_id].queue


def test_store_state_machine() -> None:
    run_state_machine_as_test(
        TaskStoreMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
