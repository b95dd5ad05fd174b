"""API keys as the store keeps them (hashes only); on both stores."""

from __future__ import annotations

import pytest

from krolik.errors import InvalidTransition
from krolik.store.base import TaskStore


async def test_a_key_is_found_by_its_hash_until_revoked(any_store: TaskStore) -> None:
    made = await any_store.create_api_key("billing", "submit", "hash-1")
    assert (made.name, made.scope, made.revoked_at) == ("billing", "submit", None)
    found = await any_store.find_api_key("hash-1")
    assert found is not None
    assert found.id == made.id
    assert await any_store.find_api_key("hash-2") is None
    assert await any_store.revoke_api_key("billing")
    assert await any_store.find_api_key("hash-1") is None
    assert not await any_store.revoke_api_key("billing"), "revoked already"
    [listed] = await any_store.list_api_keys()
    assert listed.revoked_at is not None


async def test_key_names_are_unique(any_store: TaskStore) -> None:
    await any_store.create_api_key("ops", "admin", "hash-a")
    with pytest.raises(InvalidTransition):
        await any_store.create_api_key("ops", "read", "hash-b")
