"""When ticks fall (time zones, daylight-saving changes both ways, aliases, intervals) and
what a catch-up policy runs after a downtime, with the clock given, never read."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from krolik.schedules.timing import (
    MAX_CATCH_UP,
    CatchUp,
    InvalidSchedule,
    Timing,
    plan_ticks,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(ticks: list[datetime], zone: ZoneInfo) -> list[str]:
    return [tick.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") for tick in ticks]


def day_of(ticks: list[datetime], zone: ZoneInfo, day: str) -> list[str]:
    return [text for text in local(ticks, zone) if text.startswith(day)]


def test_a_0230_schedule_runs_once_on_the_spring_forward_day() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    timing = Timing(cron="30 2 * * *", tz="Europe/Berlin")
    ticks = timing.upcoming(datetime(2026, 3, 27, tzinfo=UTC), 4)
    assert local(ticks, BERLIN) == [
        "2026-03-27 02:30 CET",
        "2026-03-28 02:30 CET",
        "2026-03-29 03:00 CEST",  # once, at the first valid moment after
        "2026-03-30 02:30 CEST",
    ]


def test_a_0230_schedule_runs_once_on_the_fall_back_day() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    timing = Timing(cron="30 2 * * *", tz="Europe/Berlin")
    ticks = timing.upcoming(datetime(2026, 10, 24, tzinfo=UTC), 3)
    assert local(ticks, BERLIN) == [
        "2026-10-24 02:30 CEST",
        "2026-10-25 02:30 CEST",  # the first of the two, only
        "2026-10-26 02:30 CET",
    ]
    assert ticks[2] - ticks[1] == timedelta(hours=25)


def test_an_hourly_schedule_runs_every_real_hour_across_both_changes() -> None:
    hourly = Timing(cron="@hourly", tz="America/New_York")
    spring = hourly.upcoming(datetime(2026, 3, 8, 5, tzinfo=UTC), 4)  # 00:00 EST
    assert day_of(spring, NEW_YORK, "2026-03-08") == [
        "2026-03-08 01:00 EST",
        "2026-03-08 03:00 EDT",  # 02:00 does not exist
        "2026-03-08 04:00 EDT",
        "2026-03-08 05:00 EDT",
    ]
    autumn = hourly.upcoming(datetime(2026, 11, 1, 4, tzinfo=UTC), 4)  # 00:00 EDT
    assert local(autumn, NEW_YORK) == [
        "2026-11-01 01:00 EDT",
        "2026-11-01 01:00 EST",  # the repeated hour is another hour: it runs too
        "2026-11-01 02:00 EST",
        "2026-11-01 03:00 EST",
    ]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(autumn))


@pytest.mark.parametrize(
    ("alias", "expression"),
    [("@daily", "0 0 * * *"), ("@weekly", "0 0 * * 0"), ("@monthly", "0 0 1 * *"),
     ("@yearly", "0 0 1 1 *"), ("@HOURLY", "0 * * * *")],
)  # fmt: skip
def test_aliases_are_the_cron_they_stand_for(alias: str, expression: str) -> None:
    start = datetime(2026, 5, 17, 13, 7, tzinfo=UTC)
    assert Timing(cron=alias).upcoming(start, 3) == Timing(cron=expression).upcoming(start, 3)


def test_intervals_tick_at_multiples_of_their_length_since_the_epoch() -> None:
    every = Timing(every_seconds=30)
    ticks = every.upcoming(datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC), 3)
    assert [t.strftime("%H:%M:%S") for t in ticks] == ["00:00:30", "00:01:00", "00:01:30"]
    # Another scheduler, another moment: the same instants.
    assert every.upcoming(datetime(2026, 1, 1, 0, 0, 29, 999, tzinfo=UTC), 1) == ticks[:1]
    assert every.next_after(ticks[0]) == ticks[1]  # strictly after


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"cron": "61 * * * *"}, "not a cron expression"),
        ({"cron": "* * *"}, "not a cron expression"),
        ({"cron": "0 0 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every_seconds": 0.5}, "every_seconds must be"),
        ({"every_seconds": float("nan")}, "every_seconds must be"),
        ({}, "exactly one"),
        ({"cron": "@daily", "every_seconds": 5}, "exactly one"),
    ],
)
def test_what_cannot_be_scheduled_is_refused(timing: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        Timing(**timing)  # type: ignore[arg-type]


START = datetime(2026, 1, 1, tzinfo=UTC)
HOURLY = Timing(cron="0 * * * *")


def test_a_tick_on_time_runs_whatever_the_policy() -> None:
    now = START + timedelta(seconds=2)
    for policy in CatchUp:
        plan = plan_ticks(HOURLY, policy, START, now)
        assert (plan.ticks, plan.missed) == ([START], 0)
        assert plan.next_run_at == START + timedelta(hours=1)


def test_after_a_downtime_skip_runs_none_once_runs_the_latest_all_runs_each() -> None:
    now = START + timedelta(hours=5, minutes=10)  # ticks at 00:00 .. 05:00 were missed
    expected = [START + timedelta(hours=h) for h in range(6)]
    skip = plan_ticks(HOURLY, CatchUp.SKIP, START, now)
    once = plan_ticks(HOURLY, CatchUp.ONCE, START, now)
    every = plan_ticks(HOURLY, CatchUp.ALL, START, now)
    assert (skip.ticks, skip.missed) == ([], 6)
    assert (once.ticks, once.missed) == ([expected[-1]], 5)
    assert (every.ticks, every.missed) == (expected, 0)
    assert {p.next_run_at for p in (skip, once, every)} == {START + timedelta(hours=6)}


def test_skip_still_runs_a_tick_that_is_only_a_little_late() -> None:
    plan = plan_ticks(HOURLY, CatchUp.SKIP, START, START + timedelta(seconds=59))
    assert plan.ticks == [START]
    assert plan_ticks(HOURLY, CatchUp.SKIP, START, START + timedelta(seconds=61)).ticks == []


def test_catching_up_all_is_bounded_to_the_latest_ticks() -> None:
    every_second = Timing(every_seconds=1)
    now = START + timedelta(days=2)  # 172,801 ticks due, counted, not walked
    plan = plan_ticks(every_second, CatchUp.ALL, START, now)
    assert len(plan.ticks) == MAX_CATCH_UP
    assert plan.ticks[-1] == now
    assert plan.missed == 2 * 86400 + 1 - MAX_CATCH_UP
    assert plan.next_run_at == now + timedelta(seconds=1)
    minutely = plan_ticks(Timing(cron="* * * * *"), CatchUp.ALL, START, START + timedelta(hours=3))
    assert len(minutely.ticks) == MAX_CATCH_UP
    assert minutely.ticks[-1] == START + timedelta(hours=3)


def test_a_schedule_not_due_yet_runs_nothing() -> None:
    plan = plan_ticks(HOURLY, CatchUp.ALL, START, START - timedelta(minutes=1))
    assert (plan.ticks, plan.missed, plan.next_run_at) == ([], 0, START)
