"""The TaskStore contract, once, for PostgreSQL (production) and SQLite (embedded mode).

Every test runs against ``any_store``; nothing here knows which store it has, except
``backdate`` which moves a timestamp into the past (both stores are SQL stores) so
"old" and "expired" need no waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, update

from krolik.errors import InvalidTransition, TaskNotFound
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask, OutboxEntry, RunRef, Task, TaskFilter
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import tasks

T = TypeVar("T")

DEFAULT_MAX_ATTEMPTS = 3
NAMES = ("echo", "report", "alpha", "beta", "job0", "job1", "job2")
"""Every handler name the tests' tasks use."""


def handlers(default_max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> dict[str, int]:
    """A worker's handlers, for claims: each name the tests use, with its default."""
    return dict.fromkeys(NAMES, default_max_attempts)


HANDLERS = handlers()
LEASE = 30.0
CLAIM = 30.0
WORKER = "worker-a"
OTHER_WORKER = "worker-b"


# -- helpers ---------------------------------------------------------------------------
async def add(store: TaskStore, **fields: Any) -> Task:
    values: dict[str, Any] = {"name": "echo", "queue": "default", "payload": {"n": 1}}
    [enqueued] = await store.enqueue([NewTask(**(values | fields))])
    assert enqueued.created
    return enqueued.task


async def take(
    store: TaskStore,
    task: Task,
    worker: str = WORKER,
    lease: float = LEASE,
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> tuple[Task, RunRef]:
    claimed = await store.claim(task.id, worker, lease, handlers(default_max_attempts))
    assert claimed is not None, f"task {task.id} was not claimable"
    return claimed, RunRef.of(claimed)


async def current(store: TaskStore, task_id: int) -> Task:
    task = await store.get(task_id)
    assert task is not None
    return task


async def drain_outbox(store: TaskStore) -> list[OutboxEntry]:
    """Take and forget every due outbox row, as a relay does after publishing."""
    entries = await store.claim_outbox(10_000, CLAIM)
    await store.delete_outbox([entry.id for entry in entries])
    return entries


async def due_outbox(store: TaskStore) -> list[int]:
    """Task ids of the due outbox rows, left in place (claimed, then given back)."""
    entries = await store.claim_outbox(10_000, CLAIM)
    await store.release_outbox([entry.id for entry in entries])
    return sorted(entry.task_id for entry in entries)


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(0.01)


async def backdate(store: TaskStore, task_id: int, **columns: timedelta) -> None:
    """Set timestamp columns of a task to that long ago (``started_at=timedelta(...)``)."""
    assert isinstance(store, SqlTaskStore)
    past = datetime.now(UTC)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values({name: past - ago for name, ago in columns.items()})
        )


def is_utc(stamp: datetime | None) -> bool:
    return stamp is not None and stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)


def near(stamp: datetime, expected: datetime, tolerance: float = 2.0) -> bool:
    return abs((stamp - expected).total_seconds()) < tolerance


# -- enqueue ---------------------------------------------------------------------------
async def test_enqueue_stores_the_fields_and_the_defaults(any_store: TaskStore) -> None:
    before = datetime.now(UTC)
    [plain, full] = await any_store.enqueue(
        [
            NewTask(name="echo", queue="default", payload={"a": [1, 2]}),
            NewTask(
                name="report",
                queue="reports",
                payload="p",
                max_attempts=5,
                timeout_seconds=1.5,
                idempotency_key="key-1",
            ),
        ]
    )
    assert plain.created
    assert full.created
    assert plain.task.id < full.task.id
    task = plain.task
    assert (task.name, task.queue, task.payload) == ("echo", "default", {"a": [1, 2]})
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0
    assert task.max_attempts is None
    assert task.timeout_seconds is None
    assert task.idempotency_key is None
    assert task.result is task.error is task.traceback is task.worker_id is None
    assert task.cancel_requested is False
    assert task.lease_expires_at is task.started_at is task.finished_at is None
    assert near(task.run_at, before)
    assert near(task.created_at, before)
    assert task.updated_at >= task.created_at
    assert await current(any_store, task.id) == task

    other = full.task
    assert (other.name, other.queue, other.payload) == ("report", "reports", "p")
    assert (other.max_attempts, other.timeout_seconds, other.idempotency_key) == (5, 1.5, "key-1")
    assert await current(any_store, other.id) == other
    assert await due_outbox(any_store) == [task.id, other.id]


async def test_max_attempts_stays_unset_until_the_claim_gives_the_default(
    any_store: TaskStore,
) -> None:
    unset = await add(any_store)
    fixed = await add(any_store, max_attempts=7)
    assert (await current(any_store, unset.id)).max_attempts is None

    claimed, _ = await take(any_store, unset, default_max_attempts=4)
    assert claimed.max_attempts == 4
    assert (await current(any_store, unset.id)).max_attempts == 4
    claimed, _ = await take(any_store, fixed, default_max_attempts=4)
    assert claimed.max_attempts == 7


async def test_get_of_a_missing_task_is_none(any_store: TaskStore) -> None:
    assert await any_store.get(123_456) is None


# -- idempotency -----------------------------------------------------------------------
async def test_the_same_idempotency_key_gives_the_same_task(any_store: TaskStore) -> None:
    first = await add(any_store, payload="first", idempotency_key="once")
    [again] = await any_store.enqueue(
        [NewTask(name="echo", queue="default", payload="second", idempotency_key="once")]
    )
    assert again.created is False
    assert again.task == first
    [one, two] = await any_store.enqueue(
        [
            NewTask(name="echo", queue="default", payload="a", idempotency_key="batch"),
            NewTask(name="echo", queue="default", payload="b", idempotency_key="batch"),
        ]
    )
    assert (one.created, two.created) == (True, False)
    assert two.task.id == one.task.id
    assert two.task.payload == "a"

    listed = await any_store.list_tasks(TaskFilter(), before_id=None, limit=100)
    assert sorted(task.id for task in listed) == [first.id, one.task.id]
    assert await due_outbox(any_store) == [first.id, one.task.id]


# -- run_at / delay --------------------------------------------------------------------
async def test_a_delayed_task_is_claimable_only_when_due(any_store: TaskStore) -> None:
    delay = 0.3
    before = datetime.now(UTC)
    task = await add(any_store, delay_seconds=delay)
    assert task.run_at >= before + timedelta(seconds=delay)
    assert near(task.run_at, before + timedelta(seconds=delay))

    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None
    assert await any_store.claim_outbox(100, CLAIM) == []
    assert (await current(any_store, task.id)).status is TaskStatus.PENDING

    entries = await eventually(lambda: any_store.claim_outbox(100, CLAIM))
    assert datetime.now(UTC) >= task.run_at
    assert [entry.task_id for entry in entries] == [task.id]
    claimed, _ = await take(any_store, task)
    assert claimed.status is TaskStatus.PROCESSING


async def test_run_at_is_kept_as_the_same_instant_in_any_zone(any_store: TaskStore) -> None:
    plus_five = timezone(timedelta(hours=5))
    later = (datetime.now(UTC) + timedelta(hours=1)).astimezone(plus_five)
    earlier = datetime.now(UTC) - timedelta(minutes=5)

    future = await add(any_store, run_at=later)
    past = await add(any_store, run_at=earlier)
    assert future.run_at == later
    assert is_utc(future.run_at)
    assert (await current(any_store, future.id)).run_at == later
    assert past.run_at == earlier

    assert await any_store.claim(future.id, WORKER, LEASE, HANDLERS) is None
    await take(any_store, past)
    assert await due_outbox(any_store) == [past.id]


# -- claim -----------------------------------------------------------------------------
async def test_claim_takes_a_lease(any_store: TaskStore) -> None:
    task = await add(any_store)
    before = datetime.now(UTC)
    claimed, _ = await take(any_store, task, lease=LEASE)
    assert claimed.status is TaskStatus.PROCESSING
    assert claimed.attempts == 1
    assert claimed.worker_id == WORKER
    assert claimed.lease_expires_at is not None
    assert claimed.lease_expires_at > datetime.now(UTC)
    assert near(claimed.lease_expires_at, before + timedelta(seconds=LEASE))
    assert claimed.started_at is not None
    assert claimed.started_at >= claimed.created_at
    assert await current(any_store, task.id) == claimed

    assert await any_store.claim(task.id, OTHER_WORKER, LEASE, HANDLERS) is None
    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None
    assert await any_store.claim(987_654, WORKER, LEASE, HANDLERS) is None
    assert await current(any_store, task.id) == claimed


# -- guarded transitions ---------------------------------------------------------------
FINISHERS: dict[str, Callable[[TaskStore, RunRef], Awaitable[bool | TaskStatus | None]]] = {
    "complete": lambda store, run: store.complete(run, {"ok": True}),
    "fail": lambda store, run: store.fail(run, "ValueError: boom", "Traceback ..."),
    "retry_later": lambda store, run: store.retry_later(run, "ValueError: boom", None, 60),
    "mark_cancelled": lambda store, run: store.mark_cancelled(run),
    "release": lambda store, run: store.release(run),
}
AFTER: dict[str, tuple[TaskStatus, int]] = {
    # transition -> (status, attempts) afterwards, for a first run
    "complete": (TaskStatus.DONE, 1),
    "fail": (TaskStatus.FAILED, 1),
    "retry_later": (TaskStatus.PENDING, 1),
    "mark_cancelled": (TaskStatus.CANCELLED, 1),
    "release": (TaskStatus.PENDING, 0),
}
BACK_TO_PENDING = {"retry_later", "release"}
"""These answer where the task went (None: not this run's any more), the others a bool."""


@pytest.mark.parametrize("action", list(FINISHERS))
async def test_a_run_is_finished_only_by_its_owner_and_only_once(
    any_store: TaskStore, action: str
) -> None:
    finish = FINISHERS[action]
    task = await add(any_store)
    await drain_outbox(any_store)
    claimed, run = await take(any_store, task)
    stale = [
        RunRef(run.task_id, run.token - 1, run.attempt, run.worker_id),
        RunRef(run.task_id, run.token + 1, run.attempt, run.worker_id),
        RunRef(999_999, run.token, run.attempt, run.worker_id),
    ]
    refused = None if action in BACK_TO_PENDING else False
    for ref in stale:
        assert await finish(any_store, ref) is refused, ref
    assert await current(any_store, task.id) == claimed

    accepted = AFTER[action][0] if action in BACK_TO_PENDING else True
    assert await finish(any_store, run) is accepted
    after = await current(any_store, task.id)
    assert (after.status, after.attempts) == AFTER[action]
    assert after.lease_expires_at is None

    assert await finish(any_store, run) is refused
    assert await current(any_store, task.id) == after


async def test_finishing_writes_the_outcome(any_store: TaskStore) -> None:
    done, failed, cancelled = [await add(any_store) for _ in range(3)]
    runs = [(await take(any_store, task))[1] for task in (done, failed, cancelled)]
    assert await any_store.complete(runs[0], {"answer": 42})
    assert await any_store.fail(runs[1], "ValueError: boom", "Traceback")
    assert await any_store.mark_cancelled(runs[2])

    done = await current(any_store, done.id)
    assert (done.status, done.result, done.error) == (TaskStatus.DONE, {"answer": 42}, None)
    failed = await current(any_store, failed.id)
    assert (failed.status, failed.error, failed.traceback) == (
        TaskStatus.FAILED,
        "ValueError: boom",
        "Traceback",
    )
    cancelled = await current(any_store, cancelled.id)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error
    for task in (done, failed, cancelled):
        assert task.finished_at is not None
        assert task.started_at is not None
        assert task.finished_at >= task.started_at


async def test_release_gives_the_task_back_at_once_without_counting_the_attempt(
    any_store: TaskStore,
) -> None:
    task = await add(any_store)
    await drain_outbox(any_store)
    _, run = await take(any_store, task)
    assert await any_store.release(run)
    released = await current(any_store, task.id)
    assert (released.status, released.attempts, released.worker_id) == (
        TaskStatus.PENDING,
        0,
        None,
    )
    assert await due_outbox(any_store) == [task.id]
    again, _ = await take(any_store, task, worker=OTHER_WORKER)
    assert again.attempts == 1


async def test_fail_unrunnable_fails_only_a_pending_task(any_store: TaskStore) -> None:
    pending, running = await add(any_store), await add(any_store)
    await take(any_store, running)
    assert await any_store.fail_unrunnable(pending.id, "no handler") is True
    assert await any_store.fail_unrunnable(pending.id, "no handler") is False
    assert await any_store.fail_unrunnable(running.id, "no handler") is False
    assert await any_store.fail_unrunnable(999_999, "no handler") is False
    failed = await current(any_store, pending.id)
    assert (failed.status, failed.error) == (TaskStatus.FAILED, "no handler")
    assert failed.finished_at is not None
    assert (await current(any_store, running.id)).status is TaskStatus.PROCESSING


# -- heartbeat -------------------------------------------------------------------------
async def test_heartbeat_extends_owned_leases_and_reports_cancel_requests(
    any_store: TaskStore,
) -> None:
    mine, cancelled, theirs, finished = [await add(any_store) for _ in range(4)]
    mine, mine_run = await take(any_store, mine, lease=5)
    _, cancelled_run = await take(any_store, cancelled, lease=5)
    theirs, _ = await take(any_store, theirs, worker=OTHER_WORKER, lease=5)
    _, finished_run = await take(any_store, finished, lease=5)
    assert await any_store.complete(finished_run, None)
    await any_store.cancel(cancelled.id)

    answer = await any_store.heartbeat(
        [
            mine_run,
            cancelled_run,
            RunRef(theirs.id, theirs.run_token + 1, theirs.attempts, WORKER),  # not its token
            RunRef(mine.id, mine.run_token - 1, mine.attempts, WORKER),  # an older run's
            finished_run,  # no longer running
            RunRef(999_999, 1, 1, WORKER),  # no such task
        ],
        LEASE * 10,
    )
    assert answer == {mine_run: False, cancelled_run: True}
    extended = await current(any_store, mine.id)
    assert extended.lease_expires_at is not None
    assert mine.lease_expires_at is not None
    assert extended.lease_expires_at > mine.lease_expires_at + timedelta(seconds=100)
    assert (await current(any_store, theirs.id)).lease_expires_at == theirs.lease_expires_at
    assert await any_store.heartbeat([], LEASE) == {}


# -- rescue ----------------------------------------------------------------------------
async def test_rescue_takes_back_expired_runs_only(any_store: TaskStore) -> None:
    again = await add(any_store, max_attempts=3)
    exhausted = await add(any_store, max_attempts=1)
    healthy = await add(any_store, max_attempts=1)
    for task in (again, exhausted, healthy):
        await take(any_store, task)
    await drain_outbox(any_store)
    for task in (again, exhausted):
        await backdate(any_store, task.id, lease_expires_at=timedelta(seconds=1))

    rescued = await any_store.rescue_expired(100)
    assert sorted((r.task_id, r.status, r.attempts) for r in rescued) == [
        (again.id, TaskStatus.PENDING, 1),
        (exhausted.id, TaskStatus.FAILED, 1),
    ]
    back = await current(any_store, again.id)
    assert (back.status, back.attempts, back.worker_id, back.lease_expires_at) == (
        TaskStatus.PENDING,
        1,
        None,
        None,
    )
    assert back.finished_at is None
    dead = await current(any_store, exhausted.id)
    assert dead.status is TaskStatus.FAILED
    assert dead.error
    assert "lease" in dead.error
    assert dead.finished_at is not None
    assert (await current(any_store, healthy.id)).status is TaskStatus.PROCESSING
    assert await due_outbox(any_store) == [again.id]

    claimed, _ = await take(any_store, back, worker=OTHER_WORKER)
    assert claimed.attempts == 2  # the lost run counted
    assert await any_store.rescue_expired(100) == []


async def test_expire_all_leases_hands_every_run_to_the_rescuer(any_store: TaskStore) -> None:
    first, second, waiting = [await add(any_store) for _ in range(3)]
    await take(any_store, first)
    await take(any_store, second, worker=OTHER_WORKER)
    assert await any_store.expire_all_leases() == 2
    for task in (first, second):
        expired = await current(any_store, task.id)
        assert expired.lease_expires_at is not None
        assert expired.lease_expires_at < datetime.now(UTC)
    rescued = await any_store.rescue_expired(100)
    assert sorted(r.task_id for r in rescued) == [first.id, second.id]
    assert (await current(any_store, waiting.id)).status is TaskStatus.PENDING
    assert await any_store.expire_all_leases() == 0


# -- retry scheduling ------------------------------------------------------------------
async def test_retry_later_moves_run_at_by_the_delay(any_store: TaskStore) -> None:
    task = await add(any_store)
    await drain_outbox(any_store)
    _, run = await take(any_store, task)
    delay = 0.3
    before = datetime.now(UTC)
    assert await any_store.retry_later(run, "ValueError: boom", "Traceback", delay)
    waiting = await current(any_store, task.id)
    assert waiting.status is TaskStatus.PENDING
    assert (waiting.error, waiting.traceback) == ("ValueError: boom", "Traceback")
    assert waiting.run_at >= before + timedelta(seconds=delay)
    assert near(waiting.run_at, before + timedelta(seconds=delay))

    assert await any_store.claim_outbox(100, CLAIM) == []
    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None
    entries = await eventually(lambda: any_store.claim_outbox(100, CLAIM))
    assert datetime.now(UTC) >= waiting.run_at
    assert [entry.task_id for entry in entries] == [task.id]
    again, _ = await take(any_store, task)
    assert again.attempts == 2


# -- cancel ----------------------------------------------------------------------------
async def test_cancel_a_pending_task(any_store: TaskStore) -> None:
    task, other = await add(any_store), await add(any_store)
    cancelled = await any_store.cancel(task.id)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert await current(any_store, task.id) == cancelled
    assert await due_outbox(any_store) == [other.id]
    assert await any_store.claim(task.id, WORKER, LEASE, HANDLERS) is None


async def test_cancel_a_running_task_asks_it_to_stop(any_store: TaskStore) -> None:
    task = await add(any_store)
    _, run = await take(any_store, task)
    asked = await any_store.cancel(task.id)
    assert (asked.status, asked.cancel_requested) == (TaskStatus.PROCESSING, True)
    assert await any_store.heartbeat([run], LEASE) == {run: True}
    assert await any_store.mark_cancelled(run)
    assert (await current(any_store, task.id)).status is TaskStatus.CANCELLED


@pytest.mark.parametrize("action", sorted(BACK_TO_PENDING))
async def test_a_run_asked_to_cancel_is_not_sent_back_to_pending(
    any_store: TaskStore, action: str
) -> None:
    """A retry or a release of a run whose task was cancelled meanwhile ends it cancelled,
    and says so: the worker logs and counts what really happened."""
    task = await add(any_store)
    await drain_outbox(any_store)
    _, run = await take(any_store, task)
    await any_store.cancel(task.id)
    assert await FINISHERS[action](any_store, run) is TaskStatus.CANCELLED
    after = await current(any_store, task.id)
    assert after.status is TaskStatus.CANCELLED
    assert after.finished_at is not None
    assert await due_outbox(any_store) == []


async def test_cancel_refuses_final_and_missing_tasks(any_store: TaskStore) -> None:
    done, failed, cancelled = [await add(any_store) for _ in range(3)]
    _, run = await take(any_store, done)
    await any_store.complete(run, "r")
    _, run = await take(any_store, failed)
    await any_store.fail(run, "boom", None)
    await any_store.cancel(cancelled.id)
    for task in (done, failed, cancelled):
        before = await current(any_store, task.id)
        with pytest.raises(InvalidTransition):
            await any_store.cancel(task.id)
        assert await current(any_store, task.id) == before
    with pytest.raises(TaskNotFound):
        await any_store.cancel(999_999)


# -- retry (API) -----------------------------------------------------------------------
async def test_retry_sends_a_dead_task_back_with_fresh_attempts(any_store: TaskStore) -> None:
    failed, cancelled = await add(any_store, max_attempts=1), await add(any_store)
    _, run = await take(any_store, failed)
    await any_store.fail(run, "boom", "Traceback")
    await any_store.cancel(cancelled.id)
    await drain_outbox(any_store)

    for task in (failed, cancelled):
        retried = await any_store.retry(task.id)
        assert retried.status is TaskStatus.PENDING
        assert retried.attempts == 0
        assert retried.error is retried.traceback is retried.finished_at is None
        assert retried.cancel_requested is False
        assert await current(any_store, task.id) == retried
    assert await due_outbox(any_store) == [failed.id, cancelled.id]
    again, _ = await take(any_store, failed)
    assert (again.attempts, again.max_attempts) == (1, 1)


async def test_retry_refuses_live_and_done_tasks(any_store: TaskStore) -> None:
    pending, running, done = [await add(any_store) for _ in range(3)]
    await take(any_store, running)
    _, run = await take(any_store, done)
    await any_store.complete(run, None)
    for task in (pending, running, done):
        before = await current(any_store, task.id)
        with pytest.raises(InvalidTransition):
            await any_store.retry(task.id)
        assert await current(any_store, task.id) == before
    with pytest.raises(TaskNotFound):
        await any_store.retry(999_999)


# -- the outbox, as the relay uses it --------------------------------------------------
async def test_claim_outbox_hands_out_due_rows_once_per_claim(any_store: TaskStore) -> None:
    added = [await add(any_store, name=f"job{i}", queue=f"q{i}") for i in range(3)]
    entries = await any_store.claim_outbox(100, 0.3)
    assert [(e.task_id, e.name, e.queue) for e in entries] == [
        (task.id, task.name, task.queue) for task in added
    ]
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert await any_store.claim_outbox(100, 0.3) == []

    again = await eventually(lambda: any_store.claim_outbox(100, CLAIM))
    assert again == entries


async def test_claim_outbox_respects_the_limit(any_store: TaskStore) -> None:
    for _ in range(3):
        await add(any_store)
    first = await any_store.claim_outbox(2, CLAIM)
    rest = await any_store.claim_outbox(2, CLAIM)
    assert (len(first), len(rest)) == (2, 1)
    assert not {e.id for e in first} & {e.id for e in rest}


async def test_release_and_delete_outbox(any_store: TaskStore) -> None:
    kept, forgotten = await add(any_store), await add(any_store)
    entries = {e.task_id: e for e in await any_store.claim_outbox(100, CLAIM)}
    await any_store.release_outbox([entries[kept.id].id])
    assert await any_store.claim_outbox(100, CLAIM) == [entries[kept.id]]

    await any_store.delete_outbox([entries[forgotten.id].id])
    await any_store.release_outbox([e.id for e in entries.values()])
    assert await any_store.claim_outbox(100, CLAIM) == [entries[kept.id]]
    await any_store.release_outbox([])
    await any_store.delete_outbox([])


async def test_enqueue_can_claim_the_outbox_rows_of_due_tasks_for_its_caller(
    any_store: TaskStore,
) -> None:
    """The API's relay publishes the rows its requests wrote without claiming them: they
    come back from ``enqueue`` already claimed, and no other relay takes them meanwhile."""
    new = [
        NewTask(name="echo", queue="default", payload=1),
        NewTask(name="echo", queue="other", payload=2, idempotency_key="handed-1"),
        NewTask(name="echo", queue="default", payload=3, delay_seconds=0.3),
        NewTask(name="echo", queue="default", payload=4),
    ]
    now, keyed, later, also_now = await any_store.enqueue(new, claim_outbox_seconds=0.4)
    handed = [item.outbox for item in (now, keyed, also_now)]
    assert [(e.task_id, e.queue, e.name) for e in handed if e is not None] == [
        (item.task.id, item.task.queue, item.task.name) for item in (now, keyed, also_now)
    ]
    assert later.outbox is None, "a task due later was handed over: it would run early"
    assert await any_store.claim_outbox(100, CLAIM) == [], "another relay took a handed row"

    # The caller never published them: when the claim runs out, any relay does.
    taken: list[OutboxEntry] = []
    everyone = sorted(item.task.id for item in (now, keyed, also_now, later))

    async def all_taken() -> bool:
        taken.extend(await any_store.claim_outbox(100, CLAIM))
        return sorted(e.task_id for e in taken) == everyone

    await eventually(all_taken)
    assert {e.id for e in taken} >= {e.id for e in handed if e is not None}


async def test_enqueue_without_a_claim_leaves_every_row_to_the_relays(
    any_store: TaskStore,
) -> None:
    enqueued = await any_store.enqueue(
        [NewTask(name="echo", queue="default", payload=i) for i in range(3)]
    )
    assert [item.outbox for item in enqueued] == [None] * 3
    assert await due_outbox(any_store) == sorted(item.task.id for item in enqueued)


async def test_a_repeated_idempotency_key_hands_nothing_over(any_store: TaskStore) -> None:
    first = NewTask(name="echo", queue="default", payload=1, idempotency_key="once")
    [created] = await any_store.enqueue([first], claim_outbox_seconds=CLAIM)
    [again] = await any_store.enqueue([first], claim_outbox_seconds=CLAIM)
    assert created.outbox is not None
    assert (again.created, again.outbox) == (False, None)


async def test_concurrent_outbox_claims_never_share_a_row(any_store: TaskStore) -> None:
    await any_store.enqueue([NewTask(name="echo", queue="default", payload=i) for i in range(60)])
    batches: Sequence[list[OutboxEntry]] = await asyncio.gather(
        *(any_store.claim_outbox(20, CLAIM) for _ in range(6))
    )
    ids = [entry.id for batch in batches for entry in batch]
    assert len(ids) == len(set(ids))
    rest = await any_store.claim_outbox(100, CLAIM)
    assert len(ids) + len(rest) == 60
    assert not set(ids) & {entry.id for entry in rest}


async def test_outbox_ids_are_never_reused(any_store: TaskStore) -> None:
    """A relay that lost its claim deletes by id: the id must not name a newer row."""
    await add(any_store)
    [old] = await drain_outbox(any_store)
    await add(any_store)
    [new] = await any_store.claim_outbox(100, CLAIM)
    assert new.id > old.id
    await any_store.delete_outbox([old.id])  # a late delete of the old row
    await any_store.release_outbox([new.id])
    assert await any_store.claim_outbox(100, CLAIM) == [new]


# -- re-dispatch of tasks whose message was lost ---------------------------------------
async def test_redispatch_stale_gives_a_lost_task_an_outbox_row(any_store: TaskStore) -> None:
    lost = await add(any_store)
    recent = await add(any_store)
    due_lately = await add(any_store)  # made long ago, due (so published) only lately
    elsewhere = await add(any_store, queue="other")
    await drain_outbox(any_store)  # published, then the messages were lost
    queued = await add(any_store)  # still has its outbox row
    future = await add(any_store, delay_seconds=3600)  # not due
    for task in (lost, queued, future, elsewhere):
        await backdate(any_store, task.id, updated_at=timedelta(hours=1), run_at=timedelta(hours=1))
    await backdate(any_store, due_lately.id, updated_at=timedelta(hours=1))
    await backdate(any_store, future.id, run_at=-timedelta(hours=1))

    assert await any_store.stale_queues(7200) == []
    assert await any_store.stale_queues(60) == ["default", "other"]
    assert await any_store.redispatch_stale(7200, 100) == 0
    assert await any_store.redispatch_stale(60, 100, []) == 0
    assert await any_store.redispatch_stale(60, 100, ["default"]) == 1
    assert await due_outbox(any_store) == [lost.id, queued.id]
    assert (await current(any_store, lost.id)).status is TaskStatus.PENDING
    assert await any_store.redispatch_stale(60, 100, ["default"]) == 0
    assert recent.id not in await due_outbox(any_store)
    assert due_lately.id not in await due_outbox(any_store)
    assert await any_store.stale_queues(60) == ["other"]
    assert await any_store.redispatch_stale(60, 100) == 1
    assert await any_store.stale_queues(60) == []


# -- operator views --------------------------------------------------------------------
async def test_queue_stats_count_each_queue(any_store: TaskStore) -> None:
    first = await add(any_store, queue="q1")
    await backdate(any_store, first.id, run_at=timedelta(minutes=5))
    await add(any_store, queue="q1")
    await add(any_store, queue="q1", delay_seconds=3600)
    running, stuck, done = [await add(any_store, queue="q2") for _ in range(3)]
    runs = [(await take(any_store, task))[1] for task in (running, stuck, done)]
    await backdate(any_store, stuck.id, started_at=timedelta(minutes=10))
    assert await any_store.complete(runs[2], None)
    failed = await add(any_store, queue="q3")
    assert await any_store.fail_unrunnable(failed.id, "no handler")

    stats = {item.queue: item for item in await any_store.queue_stats(60)}
    assert sorted(stats) == ["q1", "q2", "q3"]
    q1, q2, q3 = stats["q1"], stats["q2"], stats["q3"]
    assert (q1.pending, q1.scheduled, q1.processing, q1.stuck) == (2, 1, 0, 0)
    assert q1.oldest_pending_at == (await current(any_store, first.id)).run_at
    assert is_utc(q1.oldest_pending_at)
    assert (q2.pending, q2.scheduled, q2.processing, q2.stuck) == (0, 0, 2, 1)
    assert (q2.done_last_hour, q2.failed_last_hour, q2.cancelled_last_hour) == (1, 0, 0)
    assert q2.oldest_pending_at is None
    assert (q3.pending, q3.processing, q3.failed_last_hour) == (0, 0, 1)


async def test_outbox_stats_count_the_due_rows(any_store: TaskStore) -> None:
    empty = await any_store.outbox_stats()
    assert (empty.backlog, empty.oldest_due_at) == (0, None)
    first = await add(any_store)
    await add(any_store)
    await add(any_store, delay_seconds=3600)
    stats = await any_store.outbox_stats()
    assert stats.backlog == 2
    assert stats.oldest_due_at == first.run_at
    assert is_utc(stats.oldest_due_at)


# -- listing ---------------------------------------------------------------------------
async def test_list_tasks_filters_and_pages_newest_first(any_store: TaskStore) -> None:
    a = await add(any_store, name="alpha", queue="q1")
    b = await add(any_store, name="beta", queue="q1")
    c = await add(any_store, name="alpha", queue="q2")
    d = await add(any_store, name="alpha", queue="q1")
    _, run = await take(any_store, b)
    await any_store.complete(run, None)

    async def ids(
        task_filter: TaskFilter = TaskFilter(), before: int | None = None, limit: int = 100
    ) -> list[int]:
        found = await any_store.list_tasks(task_filter, before_id=before, limit=limit)
        return [task.id for task in found]

    assert await ids() == [d.id, c.id, b.id, a.id]
    assert await ids(limit=2) == [d.id, c.id]
    assert await ids(before=c.id) == [b.id, a.id]
    assert await ids(before=c.id, limit=1) == [b.id]
    assert await ids(before=a.id) == []
    assert await ids(TaskFilter(status=TaskStatus.DONE)) == [b.id]
    assert await ids(TaskFilter(status=TaskStatus.PENDING)) == [d.id, c.id, a.id]
    assert await ids(TaskFilter(name="alpha")) == [d.id, c.id, a.id]
    assert await ids(TaskFilter(queue="q2")) == [c.id]
    assert await ids(TaskFilter(name="alpha", queue="q1"), before=d.id) == [a.id]
    assert await ids(TaskFilter(status=TaskStatus.FAILED)) == []


# -- timestamps and JSON ---------------------------------------------------------------
async def test_timestamps_are_aware_utc_and_in_order(any_store: TaskStore) -> None:
    task = await add(any_store)
    claimed, run = await take(any_store, task)
    assert await any_store.complete(run, "r")
    done = await current(any_store, task.id)
    for stamp in (
        done.run_at,
        done.created_at,
        done.updated_at,
        done.started_at,
        done.finished_at,
        claimed.lease_expires_at,
    ):
        assert is_utc(stamp), stamp
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.updated_at >= done.started_at
    assert near(done.finished_at, datetime.now(UTC))


JSON_VALUES = {
    "string": "x",
    "int": 42,
    "negative": -7,
    "float": 1.5,
    "whole_float": 1.0,
    "big_float": 1e20,
    "bool": True,
    "none": None,
    "empty_object": {},
    "list": [1, "two", None, 3.25, False],
    "nested": {"a": {"b": [1, {"c": "d"}]}, "e": None, "f": []},
    "unicode": {"żółw": "🐇 日本語 \u00e9\u0301", "quote": "\"'\\/\n\t"},
}


@pytest.mark.parametrize("value", list(JSON_VALUES.values()), ids=list(JSON_VALUES))
async def test_payload_and_result_round_trip_as_json(any_store: TaskStore, value: Any) -> None:
    task = await add(any_store, payload=value)
    assert task.payload == value
    assert type(task.payload) is type(value)
    claimed, run = await take(any_store, task)
    assert claimed.payload == value
    assert await any_store.complete(run, value)
    done = await current(any_store, task.id)
    assert (done.payload, done.result) == (value, value)
    assert type(done.result) is type(value)


# -- many at once (the worker's batched claims and completions) ---------------------------


async def test_claim_many_claims_each_due_task_once_in_order(any_store: TaskStore) -> None:
    first, second = await add(any_store), await add(any_store, max_attempts=7)
    later = await add(any_store, delay_seconds=3600)
    answers = await any_store.claim_many(
        [second.id, first.id, first.id, later.id, 10**12], WORKER, LEASE, handlers(2)
    )
    assert [a.id if a else None for a in answers] == [second.id, first.id, None, None, None]
    claimed_second, claimed_first = answers[0], answers[1]
    assert claimed_first is not None
    assert claimed_second is not None
    assert (claimed_first.status, claimed_first.attempts) == (TaskStatus.PROCESSING, 1)
    assert claimed_first.max_attempts == 2  # the claim's default, written in
    assert claimed_second.max_attempts == 7  # the task's own
    assert claimed_first.worker_id == WORKER
    assert (await current(any_store, later.id)).status is TaskStatus.PENDING


async def test_complete_many_finishes_only_runs_still_owned(any_store: TaskStore) -> None:
    a, b, c = await add(any_store), await add(any_store), await add(any_store)
    _, run_a = await take(any_store, a)
    _, run_b = await take(any_store, b)
    _, run_c = await take(any_store, c)
    stale = RunRef(run_b.task_id, run_b.token + 1, run_b.attempt, run_b.worker_id)
    other = RunRef(run_c.task_id, run_c.token - 1, run_c.attempt, run_c.worker_id)
    answers = await any_store.complete_many([(run_a, {"ok": 1}), (stale, "no"), (other, "no")])
    assert answers == [True, False, False]
    done = await current(any_store, a.id)
    assert (done.status, done.result) == (TaskStatus.DONE, {"ok": 1})
    assert done.finished_at is not None
    assert done.started_at is not None
    assert done.finished_at >= done.started_at
    for untouched in (b.id, c.id):
        assert (await current(any_store, untouched)).status is TaskStatus.PROCESSING
    assert await any_store.complete_many([(run_a, "again")]) == [False]


# -- times and transactions of the embedded store -----------------------------------------
async def test_a_lease_counts_from_when_the_claim_runs_not_from_when_it_waited(
    sqlite_store: SqlTaskStore,
) -> None:
    """SQLite has one connection: a claim may wait for it behind another transaction. Its
    lease is counted from the moment it runs, so the wait does not shorten it."""
    task = await add(sqlite_store)
    lease = 2.0
    async with sqlite_store.engine.begin() as conn:  # the store's one connection, held
        claiming = asyncio.create_task(sqlite_store.claim(task.id, WORKER, lease, HANDLERS))
        await asyncio.sleep(1.0)
        await conn.execute(update(tasks).where(tasks.c.id == -1).values(attempts=0))
    claimed = await claiming
    returned = datetime.now(UTC)
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    left = (claimed.lease_expires_at - returned).total_seconds()
    assert left > lease - 0.3, f"the lease has only {left:.2f} s left on return"


async def test_many_claims_and_completions_are_one_transaction_each(
    sqlite_store: SqlTaskStore,
) -> None:
    added = [await add(sqlite_store) for _ in range(5)]
    begun: list[object] = []

    def on_begin(connection: object) -> None:
        begun.append(connection)

    event.listen(sqlite_store.engine.sync_engine, "begin", on_begin)
    try:
        claimed = await sqlite_store.claim_many([t.id for t in added], WORKER, LEASE, HANDLERS)
        assert len(begun) == 1
        runs = [RunRef.of(task) for task in claimed if task is not None]
        assert await sqlite_store.complete_many([(run, 1) for run in runs]) == [True] * 5
        assert len(begun) == 2
    finally:
        event.remove(sqlite_store.engine.sync_engine, "begin", on_begin)
