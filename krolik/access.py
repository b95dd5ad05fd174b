"""API keys: made by the CLI, stored hashed, checked by the API with a short cache.

Scopes nest: ``read`` reads tasks and queues, ``submit`` also creates tasks,
``admin`` also cancels and retries. Keys are random 256-bit secrets, so a plain
SHA-256 is the right hash (no password stretching needed), and the lookup is by
hash. Checked keys are cached per process for a few seconds.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from enum import IntEnum

from krolik.store.base import TaskStore
from krolik.store.records import ApiKey

KEY_PREFIX = "krolik_"


class Scope(IntEnum):
    READ = 1
    SUBMIT = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Scope:
        return cls[name.upper()]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    """Keys checked recently, so a request does not cost a query to authenticate."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._seen: dict[str, tuple[float, ApiKey | None]] = {}

    async def find(self, store: TaskStore, key_hash: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._seen.get(key_hash)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        found = await store.find_api_key(key_hash)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[key_hash] = (now, found)
        return found
