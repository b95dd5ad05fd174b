"""Unique tasks in the store: a key is held while its task is pending (running too, if
asked, and for its window), a second submit gets the holder back, and a replace takes
the holder's place in the queue (debounce)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import NewTask
from krolik.store.sql.store import SqlTaskStore
from krolik.store.tables import outbox, tasks
from tests.contract.store.support import backdate, current, drain_outbox, take


def unique(key: str = "k", name: str = "echo", **fields: object) -> NewTask:
    values: dict[str, object] = {"name": name, "queue": "default", "payload": {"n": 1}}
    return NewTask(**(values | {"unique_key": key} | fields))  # type: ignore[arg-type]


async def submit(store: TaskStore, *new: NewTask) -> list[tuple[int, bool, bool]]:
    return [(e.task.id, e.created, e.replaced) for e in await store.enqueue(list(new))]


async def count(store: TaskStore, table: object = tasks) -> int:
    assert isinstance(store, SqlTaskStore)
    async with store.engine.connect() as conn:
        stmt = select(func.count()).select_from(table)  # type: ignore[arg-type]
        return int((await conn.execute(stmt)).scalar_one())


async def test_a_pending_holder_is_given_back(any_store: TaskStore) -> None:
    [(first, made, _)] = await submit(any_store, unique())
    [(again, made_again, _)] = await submit(any_store, unique(payload={"n": 2}))
    assert (made, made_again, again) == (True, False, first)
    assert (await current(any_store, first)).payload == {"n": 1}
    # Another name, the same key: another task.
    [(other, made_other, _)] = await submit(any_store, unique(name="report"))
    assert made_other
    assert other != first
    assert await count(any_store) == 2


async def test_a_finished_holder_lets_go_unless_within_its_window(any_store: TaskStore) -> None:
    [(plain, _, _)] = await submit(any_store, unique("a"))
    [(windowed, _, _)] = await submit(any_store, unique("b", unique_for_seconds=600))
    for task_id in (plain, windowed):
        _, run = await take(any_store, await current(any_store, task_id))
        assert await any_store.complete(run, "ok")
    [(next_a, made_a, _)] = await submit(any_store, unique("a"))
    [(next_b, made_b, _)] = await submit(any_store, unique("b"))
    assert made_a
    assert next_a != plain
    assert (await current(any_store, plain)).unique_key is None  # let go
    assert (next_b, made_b) == (windowed, False)  # done, but within its 600 s
    await backdate(any_store, windowed, unique_until=timedelta(seconds=1))
    [(later_b, made_later, _)] = await submit(any_store, unique("b"))
    assert made_later
    assert later_b != windowed


async def test_a_running_holder_holds_only_when_it_said_so(any_store: TaskStore) -> None:
    [(loose, _, _)] = await submit(any_store, unique("loose"))
    [(tight, _, _)] = await submit(any_store, unique("tight", unique_running=True))
    for task_id in (loose, tight):
        await take(any_store, await current(any_store, task_id))
    [(after_loose, made_loose, _)] = await submit(any_store, unique("loose"))
    [(after_tight, made_tight, _)] = await submit(any_store, unique("tight"))
    assert made_loose
    assert after_loose != loose
    assert (after_tight, made_tight) == (tight, False)


async def test_a_window_holds_the_key_from_the_submit(any_store: TaskStore) -> None:
    [(held, _, _)] = await submit(any_store, unique(unique_for_seconds=60))
    task = await current(any_store, held)
    assert task.unique_until is not None
    assert timedelta(seconds=59) < task.unique_until - task.created_at <= timedelta(seconds=61)
    await any_store.cancel(held)
    assert (await submit(any_store, unique()))[0][:2] == (held, False)


async def test_replace_moves_the_pending_holder_to_the_new_payload_and_time(
    any_store: TaskStore,
) -> None:
    [(holder, _, _)] = await submit(any_store, unique(delay_seconds=5, unique_running=True))
    before = datetime.now(UTC)
    [(same, made, replaced)] = await submit(
        any_store, unique(payload={"n": 2}, delay_seconds=60, unique_replace=True)
    )
    assert (same, made, replaced) == (holder, False, True)
    task = await current(any_store, holder)
    assert task.payload == {"n": 2}
    assert task.run_at >= before + timedelta(seconds=59)
    assert await count(any_store, outbox) == 1  # the old row went, one for the new time
    # A running holder (that holds while running) is not replaced: it comes back as it is.
    await backdate(any_store, holder, run_at=timedelta(seconds=1))
    await drain_outbox(any_store)
    await take(any_store, await current(any_store, holder))
    [(still, _, replaced_running)] = await submit(
        any_store, unique(payload={"n": 3}, unique_replace=True, unique_running=True)
    )
    assert (still, replaced_running) == (holder, False)
    assert (await current(any_store, holder)).payload == {"n": 2}


async def test_a_key_twice_in_one_batch_makes_one_task(any_store: TaskStore) -> None:
    answers = await submit(any_store, unique("x"), unique("y"), unique("x"))
    assert [made for _, made, _ in answers] == [True, True, False]
    assert answers[0][0] == answers[2][0]
    assert await count(any_store) == 2


async def test_concurrent_submits_of_one_key_make_one_task(any_store: TaskStore) -> None:
    answers = await asyncio.gather(*(submit(any_store, unique("race")) for _ in range(20)))
    ids = {task_id for [(task_id, _, _)] in answers}
    assert len(ids) == 1
    assert sum(made for [(_, made, _)] in answers) == 1
    assert await count(any_store) == 1


async def test_a_unique_key_and_an_idempotency_key_do_not_mix(any_store: TaskStore) -> None:
    with pytest.raises(ValueError, match="not both"):
        await any_store.enqueue([unique(idempotency_key="i")])
    assert (await any_store.enqueue([NewTask(name="echo", queue="q", payload=1)]))[0].created
    assert (await current(any_store, 1)).status is TaskStatus.PENDING
