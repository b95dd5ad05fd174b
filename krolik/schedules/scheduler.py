"""The scheduler: a loop beside every worker (or alone, ``krolik scheduler``) that makes the
tasks of due ticks. There is no leader to elect or lose: each tick's task is inserted
under the tick's unique key in the transaction that moves the schedule on, so two or ten
schedulers make each tick once, and a scheduler killed half-way leaves nothing behind.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from krolik.builtin_tasks import DEFAULT_TASK_NAME
from krolik.events import Observer
from krolik.log import get_logger
from krolik.registry import Registry
from krolik.relay import OutboxRelay
from krolik.schedules.spec import ScheduledTask, new_schedule, task_of, timing_of
from krolik.schedules.timing import CatchUp, InvalidSchedule, Timing, plan_ticks
from krolik.service import LoopService
from krolik.settings import SchedulerSettings
from krolik.store.base import TaskStore
from krolik.store.records import DuePlan, NewSchedule, Schedule

log = get_logger(__name__)

MIN_WAIT_SECONDS = 0.005
"""The shortest sleep between looks (a tick just due is made on the next)."""
BROKEN_RETRY = timedelta(hours=1)
"""A schedule whose stored definition cannot be read is looked at again this much later."""


def code_schedules(registry: Registry, now: datetime) -> list[NewSchedule]:
    """The schedules the handlers of ``registry`` declare, named after them."""
    declared = []
    for handler in registry.handlers.values():
        spec = handler.schedule
        if spec is None:
            continue
        declared.append(
            new_schedule(
                handler.name,
                source="code",
                timing=Timing(cron=spec.cron, every_seconds=spec.every_seconds, tz=spec.tz),
                task=ScheduledTask(payload=spec.payload, name=handler.name, queue=spec.queue),
                catch_up=CatchUp(spec.catch_up),
                now=now,
            )
        )
    return declared


class Scheduler(LoopService):
    name = "scheduler"

    def __init__(
        self,
        store: TaskStore,
        settings: SchedulerSettings,
        *,
        default_queue: str,
        registry: Registry | None = None,
        observer: Observer | None = None,
        relay: OutboxRelay | None = None,
    ) -> None:
        super().__init__(settings.poll_seconds)
        self.store = store
        self.settings = settings
        self.default_queue = default_queue
        self.registry = registry or Registry()
        self.observer = observer or Observer()
        self.relay = relay
        """Woken when ticks made tasks (in ``krolik dev``; elsewhere relays poll)."""
        self.made = 0
        self._declared = False

    async def declare(self) -> None:
        """Write the schedules of this process's handlers (once, before the first run)."""
        declared = code_schedules(self.registry, datetime.now(UTC))
        if declared:
            refused = await self.store.declare_schedules(declared)
            for name in refused:
                log.error(
                    "schedule_not_declared",
                    schedule=name,
                    reason="a schedule of that name was created through the API",
                )
        self._declared = True

    async def tick(self) -> bool:
        if not self._declared:
            await self.declare()
        runs = await self.store.run_due_schedules(self._plan, self.settings.batch_size)
        made = 0
        for run in runs:
            for tick_at, task in run.made:
                self.observer.task_submitted(task)
                log.info(
                    "schedule_ticked",
                    schedule=run.schedule,
                    tick_at=tick_at.isoformat(),
                    task_id=task.id,
                )
            made += len(run.made)
        self.made += made
        if made and self.relay is not None:
            self.relay.wake()
        if len(runs) >= self.settings.batch_size:
            return True
        # Sleep until the next tick (by the database's clock), not a whole poll: an
        # every-second schedule is then made within milliseconds of its time. A schedule
        # created meanwhile is seen within a poll.
        due_in = await self.store.next_tick_in()
        poll = self.settings.poll_seconds
        self.interval = poll if due_in is None else min(poll, max(due_in, MIN_WAIT_SECONDS))
        return False

    def _plan(self, schedule: Schedule, now: datetime) -> DuePlan:
        """Which ticks of a due schedule to run now (its catch-up policy), and its next run."""
        try:
            timing = timing_of(schedule)
            task = task_of(schedule, self.default_queue, DEFAULT_TASK_NAME)
            catch_up = CatchUp(schedule.catch_up)
        except (InvalidSchedule, ValidationError, ValueError) as exc:
            log.error("schedule_broken", schedule=schedule.name, error=str(exc))
            return DuePlan([], now + BROKEN_RETRY, None)
        plan = plan_ticks(timing, catch_up, schedule.next_run_at, now)
        if plan.missed:
            log.warning(
                "schedule_ticks_missed",
                schedule=schedule.name,
                missed=plan.missed,
                catch_up=catch_up.value,
            )
        return DuePlan(plan.ticks, plan.next_run_at, task)
