"""A Hypothesis state machine over the real stores (PostgreSQL and SQLite), against a model.

The stores are driven through the methods production calls, so on PostgreSQL the
claims and completions are the raw asyncpg statements the worker runs. Each example
gets its own event loop and store (tables emptied), so the async store can be driven
from Hypothesis's sync rules. The model keeps, per task: status, attempts, the fencing
token of its run, owner, cancel flag, lease state and the exact number of outbox rows
the store promises:

* enqueue, retry, dispatch_later and every return to pending (retry_later, release,
  rescue) write exactly one outbox row in the same transaction;
* cancelling a pending task, and failing one no worker can run, delete its outbox rows;
* claim and the finishing transitions (complete, fail, mark_cancelled) leave
  the outbox alone: a row not yet relayed when the task was claimed stays (the
  relay publishes it, the claim by the receiving worker finds nothing to do);
* the relay deletes what it published; ``redispatch_stale`` writes one row for a
  due pending task that has none.

A run whose cancel was requested does not go back to pending: retry_later,
release and rescue end it ``cancelled`` (and dispatch nothing). Only a run's token
decides whether it may still act: a stale run (an older token, or a newer one no claim
gave out) changes nothing, whatever its attempt number says.

Stale actors and refused transitions change nothing at all: both tables, every column,
are compared with the previous step. A final task never changes again except through
retry.

Hypothesis switches rules off at random per example (swarm testing), so every
example starts from a few tasks, some already claimed (``some_tasks``), and
related operations share one rule (``worker_acts``: heartbeat and the five ways
to finish a run; ``maintenance``: rescue, relay, redispatch) so that the steps
the interesting sequences need are not crowded out.

``test_two_actors_at_once_act_as_if_one_after_the_other`` adds concurrency: two actors
(workers, the rescuer, the API's cancel and retry) on one task at the same moment, on
connections of their own, must leave what one of the two serial orders would.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, literal, select

from krolik.errors import InvalidTransition, TaskNotFound
from krolik.settings import DatabaseSettings
from krolik.states import FINAL_STATES, TaskStatus
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import NewTask, RescuedTask, RunRef, Task
from krolik.store.sql.store import SqlTaskStore
from krolik.store.sqlite import SqliteTaskStore
from krolik.store.tables import Timestamp, outbox, tasks
from tests.conftest import pg_url

pytestmark = pytest.mark.integration

PENDING, PROCESSING = TaskStatus.PENDING, TaskStatus.PROCESSING
DONE, FAILED, CANCELLED = TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED
WORKERS = ("worker-a", "worker-b")
CONCURRENT = ("claim", "cancel", "retry", "rescue", "complete", "retry_later", "release")
LEASES = (60.0, -60.0)  # a live lease, or one that is already over
FINISHES = ("complete", "fail", "retry_later", "mark_cancelled", "release")
TAMPERS = (None, "older", "newer", "attempt")
MISSING_ID = 10**12
EXISTS = st.integers(min_value=0, max_value=7).map(bool)  # now and then: a missing task

Snapshot = tuple[dict[int, tuple[Any, ...]], list[tuple[Any, ...]]]

_store_factory: Callable[[], SqlTaskStore] | None = None
"""Makes the store an example runs on (set per test: the machine cannot take fixtures)."""


@pytest.fixture(scope="module")
def sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded store file, migrated once; every example empties its tables."""
    path = tmp_path_factory.mktemp("state-machine") / "krolik.sqlite3"
    store = SqliteTaskStore(path)
    asyncio.run(_open_and_close(store))
    return path


async def _open_and_close(store: SqlTaskStore) -> None:
    await store.open()
    await store.close()


@pytest.fixture(params=["postgres", "sqlite"])
def store_factory(request: pytest.FixtureRequest) -> Iterator[None]:
    """The production store (its hot statements are the raw ones production runs) or the
    embedded one, for the examples of one test."""
    global _store_factory
    if request.param == "postgres":
        database = request.getfixturevalue("pg_database")
        _store_factory = lambda: PostgresTaskStore.from_settings(  # noqa: E731
            DatabaseSettings(url=pg_url(database), pool_size=2, max_overflow=0)
        )
    else:
        path = request.getfixturevalue("sqlite_file")
        _store_factory = lambda: SqliteTaskStore(path)  # noqa: E731
    yield
    _store_factory = None


@dataclass
class Model:
    name: str
    status: TaskStatus
    attempts: int = 0
    max_attempts: int | None = None
    worker: str | None = None
    token: int = 0
    """The run token of the current (or last) run: every claim takes the next one."""
    cancel_requested: bool = False
    lease_expired: bool = False
    outbox: int = 1
    published: bool = False
    """The relay published (and deleted) its outbox rows since it last became pending."""


def back_to_pending(m: Model) -> None:
    """processing -> pending with one new outbox row, or cancelled if that was asked."""
    m.worker = None
    m.lease_expired = False
    if m.cancel_requested:
        m.status = CANCELLED
    else:
        m.status = PENDING
        m.outbox += 1
        m.published = False


def owns(model: dict[int, Model], ref: RunRef) -> bool:
    """Only the token decides: attempt numbers and workers repeat (a released run
    claimed again by the same worker has the same of both)."""
    m = model.get(ref.task_id)
    return m is not None and m.status is PROCESSING and m.token == ref.token


# The model's side of each store call: what it must answer, and what it must change.
# Sequential rules and interleaved pairs use the same ones.
def predict_claim(
    model: dict[int, Model], task_id: int, worker: str, lease: float, default_max: int
) -> tuple[Any, ...] | None:
    m = model[task_id]
    if m.status is not PENDING:
        return None
    m.status, m.worker, m.lease_expired = PROCESSING, worker, lease < 0
    m.attempts += 1
    m.token += 1
    if m.max_attempts is None:
        m.max_attempts = default_max
    return (PROCESSING, m.attempts, m.token, worker, m.max_attempts)


def predict_cancel(model: dict[int, Model], task_id: int) -> str:
    m = model[task_id]
    if m.status is PENDING:
        m.status, m.outbox = CANCELLED, 0
        return "cancelled"
    if m.status is PROCESSING:
        m.cancel_requested = True
        return "asked to stop"
    return "refused"


def predict_retry(model: dict[int, Model], task_id: int) -> str:
    m = model[task_id]
    if m.status not in (FAILED, CANCELLED):
        return "refused"
    m.status, m.attempts, m.cancel_requested = PENDING, 0, False
    m.lease_expired, m.published = False, False
    m.outbox += 1
    return "pending"


def predict_finish(model: dict[int, Model], action: str, ref: RunRef) -> Any:
    """bool for complete, fail and mark_cancelled; where the task went (None: refused)
    for retry_later and release."""
    if not owns(model, ref):
        return None if action in ("retry_later", "release") else False
    m = model[ref.task_id]
    if action in ("complete", "fail", "mark_cancelled"):
        m.status = {"complete": DONE, "fail": FAILED, "mark_cancelled": CANCELLED}[action]
        m.lease_expired = False
        return True
    landed = CANCELLED if m.cancel_requested else PENDING
    if action == "release":
        m.attempts -= 1
    back_to_pending(m)
    return landed


def predict_rescue(model: dict[int, Model]) -> list[tuple[int, TaskStatus, int]]:
    rescued = []
    for task_id in sorted(model):
        m = model[task_id]
        if m.status is not PROCESSING or not m.lease_expired:
            continue
        if m.cancel_requested:
            status = CANCELLED
        elif m.attempts >= (m.max_attempts or 1):
            status = FAILED
        else:
            status = PENDING
        rescued.append((task_id, status, m.attempts))
        if status is FAILED:
            m.status, m.worker, m.lease_expired = FAILED, None, False
        else:
            back_to_pending(m)
    return rescued


# How each call answered, in the terms of the predictions above.
def claim_answer(task: Task | None) -> tuple[Any, ...] | None:
    if task is None:
        return None
    return (task.status, task.attempts, task.run_token, task.worker_id, task.max_attempts)


def cancel_answer(result: Task | BaseException) -> str:
    if isinstance(result, InvalidTransition):
        return "refused"
    if isinstance(result, BaseException):
        raise result
    if result.status is CANCELLED:
        return "cancelled"
    assert (result.status, result.cancel_requested) == (PROCESSING, True), result
    return "asked to stop"


def retry_answer(result: Task | BaseException) -> str:
    if isinstance(result, InvalidTransition):
        return "refused"
    if isinstance(result, BaseException):
        raise result
    assert (result.status, result.attempts) == (PENDING, 0), result
    return "pending"


def rescue_answer(rescued: list[RescuedTask]) -> list[tuple[int, TaskStatus, int]]:
    return sorted((r.task_id, r.status, r.attempts) for r in rescued)


def finish_call(store: SqlTaskStore, action: str, ref: RunRef) -> Any:
    return {
        "complete": lambda: store.complete(ref, {"ok": ref.attempt}),
        "fail": lambda: store.fail(ref, "boom", "Traceback: boom"),
        "retry_later": lambda: store.retry_later(ref, "again", None, 0),
        "mark_cancelled": lambda: store.mark_cancelled(ref),
        "release": lambda: store.release(ref),
    }[action]()


@dataclass
class Actor:
    """One of two concurrent calls: what it does, what the model says it answers, and how
    its answer reads in the model's terms."""

    label: str
    call: Callable[[SqlTaskStore], Awaitable[Any]]
    predict: Callable[[dict[int, Model]], Any]
    answer: Callable[[Any], Any]


def differences(
    task_rows: dict[int, Any], outbox_rows: list[Any], model: dict[int, Model]
) -> list[str]:
    """Where the tables disagree with a model (the fields the transitions change)."""
    counts = Counter(row.task_id for row in outbox_rows)
    found = []
    for task_id, m in model.items():
        row = task_rows[task_id]
        stored = (
            TaskStatus(row.status),
            row.attempts,
            row.run_token,
            row.cancel_requested,
            counts[task_id],
            row.worker_id if m.status is PROCESSING else m.worker,
        )
        wanted = (m.status, m.attempts, m.token, m.cancel_requested, m.outbox, m.worker)
        if stored != wanted:
            found.append(f"task {task_id}: stored {stored}, model {wanted}")
    return found


def has_tasks(machine: TaskStoreMachine) -> bool:
    return bool(machine.model)


def has_refs(machine: TaskStoreMachine) -> bool:
    return bool(machine.issued)


class TaskStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert _store_factory is not None, "the store_factory fixture did not run"
        self.loop = asyncio.new_event_loop()
        self.store = _store_factory()

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
                        (tasks.c.lease_expires_at < literal(datetime.now(UTC), Timestamp)).label(
                            "expired"
                        ),
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
        return owns(self.model, ref)

    @staticmethod
    def tampered(ref: RunRef, tamper: str | None) -> RunRef:
        if tamper == "older":
            return replace(ref, token=ref.token - 1)
        if tamper == "newer":
            return replace(ref, token=ref.token + 1)
        if tamper == "attempt":  # the attempt number is not part of the guard
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
        status = self.model[task_id].status
        expected = predict_cancel(self.model, task_id)
        if expected == "refused":
            with pytest.raises(InvalidTransition):
                self.run(self.store.cancel(task_id))
            self.expect_unchanged(f"cancel of {status} task {task_id}")
            return
        assert cancel_answer(self.run(self.store.cancel(task_id))) == expected

    @precondition(has_tasks)
    @rule(data=st.data(), exists=EXISTS)
    def retry(self, data: st.DataObject, exists: bool) -> None:
        """The API's retry: failed or cancelled -> pending with fresh attempts."""
        if not exists:
            self.on_missing_task("retry")
            return
        task_id = self.pick(data, FAILED, CANCELLED)
        status = self.model[task_id].status
        if predict_retry(self.model, task_id) == "refused":
            with pytest.raises(InvalidTransition):
                self.run(self.store.retry(task_id))
            self.expect_unchanged(f"retry of {status} task {task_id}")
            return
        task = self.run(self.store.retry(task_id))
        assert (task.status, task.attempts) == (PENDING, 0)
        self.frozen.pop(task_id, None)

    # -- workers -------------------------------------------------------------------
    @precondition(has_tasks)
    @rule(data=st.data())
    def claim_task(self, data: st.DataObject) -> None:
        task_id = self.pick(data, PENDING)
        worker = data.draw(st.sampled_from(WORKERS), label="worker")
        lease = data.draw(st.sampled_from(LEASES), label="lease")
        default_max = data.draw(st.integers(min_value=1, max_value=3), label="default_max")
        status, name = self.model[task_id].status, self.model[task_id].name
        expected = predict_claim(self.model, task_id, worker, lease, default_max)
        task = self.run(self.store.claim(task_id, worker, lease, {name: default_max}))
        assert claim_answer(task) == expected
        if task is None:
            self.expect_unchanged(f"claim of {status} task {task_id}")
            return
        self.issued.append(RunRef.of(task))

    @precondition(has_tasks)
    @rule(data=st.data(), error=st.sampled_from(["no handler", "unknown name"]))
    def fail_unrunnable(self, data: st.DataObject, error: str) -> None:
        task_id = self.pick(data, PENDING)
        m = self.model[task_id]
        changed = self.run(self.store.fail_unrunnable(task_id, error))
        assert changed is (m.status is PENDING)
        if changed:
            m.status = FAILED
            m.outbox = 0  # nothing left to dispatch
        else:
            self.expect_unchanged(f"fail_unrunnable of {m.status} task {task_id}")

    @precondition(has_tasks)
    @rule(data=st.data())
    def put_back(self, data: st.DataObject) -> None:
        """A worker without the task's handler (or no free slot) dispatches it again."""
        task_id = self.pick(data, PENDING)
        m = self.model[task_id]
        answer = self.run(self.store.dispatch_later([task_id, MISSING_ID], 0))
        if m.status is not PENDING:
            assert answer == []
            self.expect_unchanged(f"dispatch_later of {m.status} task {task_id}")
            return
        assert answer == [task_id]
        m.outbox += 1
        m.published = False

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
            ref = RunRef(task_id, m.token, m.attempts, m.worker)
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
            run: self.model[run.task_id].cancel_requested for run in runs if self.valid(run)
        }
        answer = self.run(self.store.heartbeat(runs, lease))
        assert answer == expected
        if not expected:
            self.expect_unchanged(f"heartbeat of stale runs {runs}")
        for run in expected:
            self.model[run.task_id].lease_expired = lease < 0

    def finish(self, action: str, ref: RunRef) -> None:
        expected = predict_finish(self.model, action, ref)
        answer = self.run(finish_call(self.store, action, ref))
        assert answer is expected, f"{action} with {ref}"
        if expected is None or expected is False:
            self.expect_unchanged(f"stale {action} with {ref}")

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
        expected = predict_rescue(self.model)
        assert rescue_answer(self.run(self.store.rescue_expired(100))) == expected

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
            assert row.run_token == m.token, where
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


def test_store_state_machine(store_factory: None) -> None:
    run_state_machine_as_test(
        TaskStoreMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# -- two actors at once ----------------------------------------------------------------------
class TwoActors:
    """One task brought to a drawn state one call at a time, then two actors on it at the
    same moment, each on a store (connections) of its own.

    The concurrent step comes last: which order the database chose is not known in
    advance, and nothing drawn may depend on it (Hypothesis replays what it draws).
    """

    def __init__(self, factory: Callable[[], SqlTaskStore]) -> None:
        self.loop = asyncio.new_event_loop()
        self.store, self.other = factory(), factory()
        self.model: dict[int, Model] = {}
        self.issued: list[RunRef] = []
        self.loop.run_until_complete(self._empty())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _empty(self) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(delete(outbox))
            await conn.execute(delete(tasks))

    def close(self) -> None:
        try:
            self.run(self._empty())
            self.run(self.store.close())
            self.run(self.other.close())
        finally:
            self.loop.close()

    def prepare(self, data: st.DataObject) -> int:
        """A task, and a few steps on it (each checked against the model)."""
        [enqueued] = self.run(
            self.store.enqueue([NewTask(name="pair", queue="default", payload=None)])
        )
        task_id = enqueued.task.id
        self.model[task_id] = Model(name="pair", status=PENDING)
        for step in range(data.draw(st.integers(min_value=0, max_value=4), label="steps")):
            actor = self.actor(data, task_id, f"step {step}")
            expected = actor.predict(self.model)
            answer = actor.answer(self.run(_outcome(actor.call(self.store))))
            assert answer == expected, f"{actor.label}: {answer} != {expected}"
            self.note(actor, answer)
        return task_id

    def note(self, actor: Actor, answer: Any) -> None:
        if actor.label.startswith("claim") and answer is not None:
            task_id = next(iter(self.model))
            m = self.model[task_id]
            assert m.worker is not None
            self.issued.append(RunRef(task_id, m.token, m.attempts, m.worker))

    def both(self, data: st.DataObject, task_id: int) -> None:
        actors = [self.actor(data, task_id, label) for label in ("first", "second")]
        orders = []
        for order in ((0, 1), (1, 0)):
            model = copy.deepcopy(self.model)
            expected: list[Any] = [None, None]
            for index in order:
                expected[index] = actors[index].predict(model)
            orders.append((model, expected))
        results = self.run(self.together(actors))
        answers = [actor.answer(result) for actor, result in zip(actors, results, strict=True)]
        task_rows, outbox_rows = self.run(self._rows())
        seen = []
        for model, expected in orders:
            missing = differences(task_rows, outbox_rows, model)
            if answers == expected and not missing:
                return
            seen.append((expected, missing))
        raise AssertionError(
            f"{[a.label for a in actors]} answered {answers}: no serial order gives that: {seen}"
        )

    async def together(self, actors: list[Actor]) -> list[Any]:
        both = asyncio.gather(
            _outcome(actors[0].call(self.store)),
            _outcome(actors[1].call(self.other)),
        )
        return list(await asyncio.wait_for(both, 10))

    async def _rows(self) -> tuple[dict[int, Any], list[Any]]:
        async with self.store.engine.connect() as conn:
            task_rows = (await conn.execute(select(tasks).order_by(tasks.c.id))).all()
            outbox_rows = (await conn.execute(select(outbox).order_by(outbox.c.id))).all()
        return {row.id: row for row in task_rows}, outbox_rows

    def actor(self, data: st.DataObject, task_id: int, label: str) -> Actor:
        kind = data.draw(st.sampled_from(CONCURRENT), label=f"{label} actor")
        m = self.model[task_id]
        if kind == "claim":
            worker = data.draw(st.sampled_from(WORKERS), label=f"{label} worker")
            lease = data.draw(st.sampled_from(LEASES), label=f"{label} lease")
            return Actor(
                f"claim by {worker}",
                lambda store: store.claim(task_id, worker, lease, {m.name: 2}),
                lambda model: predict_claim(model, task_id, worker, lease, 2),
                claim_answer,
            )
        if kind == "cancel":
            return Actor(
                "cancel",
                lambda store: store.cancel(task_id),
                lambda model: predict_cancel(model, task_id),
                cancel_answer,
            )
        if kind == "retry":
            return Actor(
                "retry",
                lambda store: store.retry(task_id),
                lambda model: predict_retry(model, task_id),
                retry_answer,
            )
        if kind == "rescue":
            return Actor(
                "rescue", lambda store: store.rescue_expired(100), predict_rescue, rescue_answer
            )
        # A run finishing: the current one, or one an earlier claim handed out.
        refs = list(self.issued)
        if m.status is PROCESSING and m.worker is not None:
            refs.append(RunRef(task_id, m.token, m.attempts, m.worker))
        ref = (
            data.draw(st.sampled_from(refs), label=f"{label} run")
            if refs
            else RunRef(task_id, m.token + 1, m.attempts, WORKERS[0])
        )
        return Actor(
            f"{kind} of {ref}",
            lambda store: finish_call(store, kind, ref),
            lambda model: predict_finish(model, kind, ref),
            lambda result: result,
        )


async def _outcome(call: Awaitable[Any]) -> Any:
    """The call's result, or the error it raised (a refusal is an answer too)."""
    try:
        return await call
    except InvalidTransition as exc:
        return exc


@given(data=st.data())
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_two_actors_at_once_act_as_if_one_after_the_other(
    store_factory: None, data: st.DataObject
) -> None:
    """Two workers, the rescuer and the API's cancel and retry, two at a time on one task:
    whatever the interleaving, the answers and the tables are those of one of the two
    orders the calls could have run in, one after the other."""
    assert _store_factory is not None
    pair = TwoActors(_store_factory)
    try:
        task_id = pair.prepare(data)
        pair.both(data, task_id)
    finally:
        pair.close()
