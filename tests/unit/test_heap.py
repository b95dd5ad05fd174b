"""GC tuning at start-up: garbage goes first, the living are frozen, the API does it."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager

from krolik.api.app import create_app
from krolik.broker.memory import MemoryBroker
from krolik.heap import (
    MIDDLE_THRESHOLD,
    OLDEST_THRESHOLD,
    YOUNG_THRESHOLD,
    tune_garbage_collector,
)
from krolik.node import Node, Role
from krolik.store.sqlite import SqliteTaskStore
from tests.conftest import test_settings


class Link:
    """A cycle of these is garbage only the collector can free."""

    partner: Link | None = None


@pytest.fixture
def unfrozen() -> None:
    """Start from a thawed heap (the suite's autouse fixture restores the rest)."""
    gc.unfreeze()


def test_garbage_is_collected_before_the_freeze(unfrozen: None) -> None:
    first, second = Link(), Link()
    first.partner, second.partner = second, first
    garbage = weakref.ref(first)
    del first, second
    alive = Link()

    tune_garbage_collector()

    assert garbage() is None, "a cycle left over from start-up was frozen forever"
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(alive)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLDEST_THRESHOLD)


async def test_the_api_freezes_its_heap_once_started(unfrozen: None, tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "krolik.sqlite3")
    app = create_app(
        Node.build(test_settings("unused", "heap"), {Role.API}, store=store, broker=MemoryBroker())
    )
    assert gc.get_freeze_count() == 0
    try:
        async with LifespanManager(app):
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    finally:
        await store.close()
