"""When a schedule's ticks fall, and which ticks to run now: pure, no clock of its own.

Cron expressions are evaluated by cronsim in the schedule's time zone, with Debian
cron's rules for daylight-saving changes: a time skipped by the spring change runs once,
at the first valid moment after it (02:30 on a day that jumps from 02:00 to 03:00 runs
at 03:00); a time repeated by the autumn change runs once, the first time (a schedule
with a wildcard hour, such as ``0 * * * *``, runs in both of the repeated hours, as they
are two different hours). Intervals (``every_seconds``) tick at multiples of their
length since the Unix epoch, so every scheduler computes the same instants. Every tick
is a UTC time: the unique key of the task it makes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MIN_EVERY_SECONDS = 1.0
MAX_EVERY_SECONDS = 366 * 86400.0
MISSED_AFTER_SECONDS = 60.0
"""A tick later than this is missed: ``catch_up=skip`` drops it instead of running late."""
MAX_CATCH_UP = 100
"""``catch_up=all`` runs at most this many missed ticks (the latest ones)."""


class InvalidSchedule(ValueError):
    """A cron expression, interval or time zone that cannot be scheduled."""


class CatchUp(StrEnum):
    """What to run for ticks missed while no scheduler ran (or it was late)."""

    SKIP = "skip"
    """Nothing: only a tick on time (up to a minute late) runs."""
    ONCE = "once"
    """One task for all of them (the latest tick)."""
    ALL = "all"
    """One task per missed tick, at most ``MAX_CATCH_UP`` (the latest)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """A cron expression in a time zone, or an interval in seconds (exactly one)."""

    cron: str | None = None
    every_seconds: float | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_seconds is None):
            raise InvalidSchedule("give cron or every_seconds (exactly one)")
        if self.every_seconds is not None:
            every = self.every_seconds
            if not math.isfinite(every) or not MIN_EVERY_SECONDS <= every <= MAX_EVERY_SECONDS:
                raise InvalidSchedule(
                    f"every_seconds must be from {MIN_EVERY_SECONDS:g} to "
                    f"{MAX_EVERY_SECONDS:g}, not {every!r}"
                )
        zone = self.zone  # checks the name
        if self.cron is not None:
            try:
                CronSim(self.expression, datetime.now(zone))
            except (CronSimError, ValueError, IndexError) as exc:
                raise InvalidSchedule(f"not a cron expression: {self.cron!r} ({exc})") from None

    @property
    def expression(self) -> str:
        assert self.cron is not None
        text = " ".join(self.cron.split())
        return ALIASES.get(text.lower(), text)

    @property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidSchedule(f"unknown time zone {self.tz!r}") from None

    def ticks_after(self, after: datetime) -> Iterator[datetime]:
        """Every tick strictly after ``after``, in order, as UTC times."""
        if self.every_seconds is not None:
            every = self.every_seconds
            step = math.floor(after.timestamp() / every) + 1
            while True:
                yield datetime.fromtimestamp(step * every, UTC)
                step += 1
        previous: datetime | None = None
        for local in CronSim(self.expression, after.astimezone(self.zone)):
            tick = local.astimezone(UTC)
            if previous is None or tick > previous:  # never the same instant twice
                previous = tick
                yield tick

    def next_after(self, after: datetime) -> datetime:
        return next(self.ticks_after(after))

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        ticks = self.ticks_after(after)
        return [next(ticks) for _ in range(count)]


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What a scheduler does for one due schedule now."""

    ticks: list[datetime]
    """The ticks to make tasks for (oldest first); may be empty (all skipped)."""
    next_run_at: datetime
    """The first tick after now."""
    missed: int
    """Due ticks not run (the catch-up policy dropped them)."""


def plan_ticks(timing: Timing, catch_up: CatchUp, due_from: datetime, now: datetime) -> TickPlan:
    """The ticks from ``due_from`` (the schedule's next run, itself a tick) up to ``now``,
    as ``catch_up`` would run them, and the next run after ``now``."""
    if due_from > now:
        return TickPlan([], due_from, missed=0)
    due, count = [due_from], 1
    if timing.every_seconds is not None:
        # Counted, not walked: a long downtime of a short interval is many ticks.
        every = timedelta(seconds=timing.every_seconds)
        count = int((now - due_from) / every) + 1
        first = max(0, count - MAX_CATCH_UP)
        due = [due_from + every * i for i in range(first, count)]
    else:
        for tick in timing.ticks_after(due_from):
            if tick > now:
                break
            count += 1
            due.append(tick)
            if len(due) > MAX_CATCH_UP:
                due.pop(0)
    if catch_up is CatchUp.ALL:
        run = due[-MAX_CATCH_UP:]
    elif catch_up is CatchUp.ONCE:
        run = due[-1:]
    else:
        run = [tick for tick in due[-1:] if (now - tick).total_seconds() <= MISSED_AFTER_SECONDS]
    return TickPlan(run, timing.next_after(now), missed=count - len(run))
