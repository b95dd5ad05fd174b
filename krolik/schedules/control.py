"""What an operator does to a schedule, the same from the API and the command line."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from krolik.schedules.spec import timing_of
from krolik.store.base import TaskStore
from krolik.store.records import Schedule


async def set_paused(store: TaskStore, name: str, paused: bool) -> Schedule | None:
    """Pause or resume; a resumed schedule goes on from its next tick after now (the
    ticks of the pause are not caught up). None if there is no such schedule."""
    schedule = await store.get_schedule(name)
    if schedule is None or schedule.paused is paused:
        return schedule
    changes: dict[str, Any] = {"paused": paused}
    if not paused:
        changes["next_run_at"] = timing_of(schedule).next_after(datetime.now(UTC))
    return await store.change_schedule(name, changes)
