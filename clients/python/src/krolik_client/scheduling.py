"""The bodies of ``POST /schedules`` and ``PATCH /schedules/{name}``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, TypedDict

from krolik_client.handlers import HandlerTypes, handler_types
from krolik_client.submission import ScheduledTaskOptions, scheduled_task, seconds

CatchUp = Literal["skip", "once", "all"]


def schedule_body(
    name: str,
    types: HandlerTypes,
    payload: Any,
    cron: str | None,
    every: float | timedelta | None,
    tz: str,
    catch_up: CatchUp,
    paused: bool,
    options: ScheduledTaskOptions,
) -> dict[str, Any]:
    if (cron is None) == (every is None):
        raise TypeError("give cron or every, one of them")
    body: dict[str, Any] = {
        "name": name,
        "tz": tz,
        "task": scheduled_task(types, payload, options),
        "catch_up": catch_up,
        "paused": paused,
    }
    if cron is not None:
        body["cron"] = cron
    if every is not None:
        body["every_seconds"] = seconds(every)
    return body


class ScheduleChanges(TypedDict, total=False):
    """What to change; a new ``cron`` replaces ``every`` and the other way round. ``task``
    (a handler or a name) with ``payload`` and ``task_options`` replaces each tick's task."""

    cron: str
    every: float | timedelta
    tz: str
    catch_up: CatchUp
    paused: bool
    task: Callable[..., Any] | str
    payload: Any
    task_options: ScheduledTaskOptions


def schedule_changes(changes: ScheduleChanges) -> dict[str, Any]:
    unknown = set(changes) - ScheduleChanges.__optional_keys__
    if unknown:
        raise TypeError(f"unknown schedule settings: {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {}
    for key in ("cron", "tz", "catch_up", "paused"):
        if key in changes:
            body[key] = changes[key]
    if "every" in changes:
        body["every_seconds"] = seconds(changes["every"])
    if "task" in changes:
        types = handler_types(changes["task"])
        body["task"] = scheduled_task(
            types, changes.get("payload"), changes.get("task_options", {})
        )
    elif "payload" in changes or "task_options" in changes:
        raise TypeError("a new payload or task_options needs the task too")
    if not body:
        raise TypeError("give at least one schedule setting to change")
    return body
