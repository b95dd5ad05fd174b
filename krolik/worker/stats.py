"""What a worker counted: the figures of its ``worker_stopped`` log line (and of tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    snoozed: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    declined: int = 0
    """Tasks put back for a worker with their handler (or until one comes)."""
    handed_back: int = 0
    """Tasks of messages that waited too long for a free slot, dispatched again."""
    held: int = 0
    """Tasks their queue's gates held (paused, at a limit): the store wakes them."""
