"""What ``PATCH /queues/{name}`` sets: a queue's pause and limits, given by keyword."""

from __future__ import annotations

from typing import Any, TypedDict


class QueueChanges(TypedDict, total=False):
    """The fields given are set, None lifting a limit; the others stay as they are."""

    paused: bool
    max_running: int | None
    max_running_per_key: int | None
    rate_limit: str | None  # "60/minute", "10 per 2 seconds"
    default_priority: int | None  # of its tasks that give none


def queue_changes(changes: QueueChanges) -> dict[str, Any]:
    unknown = set(changes) - QueueChanges.__optional_keys__
    if unknown:
        raise TypeError(f"unknown queue settings: {', '.join(sorted(unknown))}")
    if not changes:
        raise TypeError("give at least one queue setting to change")
    return dict(changes)
