"""The outbox as the relay uses it; on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from krolik.store.base import TaskStore
from krolik.store.records import NewTask, OutboxEntry
from tests.contract.store.support import (
    CLAIM,
    add,
    drain_outbox,
    due_outbox,
    eventually,
)


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
        NewTask(name="echo", queue="default", payload=3, delay_seconds=1.5),
        NewTask(name="echo", queue="default", payload=4),
    ]
    # Margins of seconds: a loaded machine took longer than 0.3 s between the two calls.
    now, keyed, later, also_now = await any_store.enqueue(new, claim_outbox_seconds=2.0)
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

    await eventually(all_taken, timeout=10)
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
