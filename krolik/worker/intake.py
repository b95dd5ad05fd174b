"""Deliveries in: decode, take slots, claim, start runs; settle every delivery.

A packed message takes as many free slots as it can use at once and claims that group
in one statement. The claim takes only tasks whose stored name this worker has a
handler for, and the run uses the stored name's handler, whatever the message says.
A task it has no handler for is put back for a worker that has one (or failed, once it
has waited too long with none alive); a task waiting too long for a slot is handed
back to the store for any worker. Whatever is raised, the delivery ends settled:
acked, requeued after a pause, or dead-lettered.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from krolik.batching import MicroBatcher
from krolik.broker.base import Delivery
from krolik.broker.wire import MalformedMessage, TaskMessage
from krolik.errors import StoreError
from krolik.events import Observer
from krolik.log import get_logger
from krolik.registry import Registry
from krolik.settings import WorkerSettings
from krolik.states import TaskStatus
from krolik.store.base import TaskStore
from krolik.store.records import RunRef, Task
from krolik.worker.handover import Handover
from krolik.worker.peers import Peers
from krolik.worker.slots import Slots
from krolik.worker.stats import WorkerStats

log = get_logger(__name__)

REQUEUE_DELAY_SECONDS = 1.0
"""A delivery that could not be handled (the store is away) goes back after this, so a
worker does not spin on it."""
DECLINE_DELAY_SECONDS = 0.5
"""A task whose handler another live worker has is dispatched again after this."""
UNSERVED_RECHECK_SECONDS = 5.0
"""A task whose handler no live worker has is looked at again after this."""
HELD_TAKE = 4
"""The most held tasks a run that ends takes into this worker's free slots at once."""
HOLDING_MEMORY_SECONDS = 10.0
"""How long a queue counts as holding tasks after this worker last saw one held there:
meanwhile each of its runs that ends takes the best held task into its slot. Beyond it
(or for a queue whose holds this worker never saw) the waker wakes them, within its
look of 2 s, and a queue that holds nothing costs its runs no statement at all."""


def is_overdue(task: Task) -> bool:
    """A pending task past its ``expires_at`` (by this clock; the store's decides)."""
    return (
        task.status is TaskStatus.PENDING
        and task.expires_at is not None
        and task.expires_at <= datetime.now(UTC)
    )


class _Once:
    """A delivery settled at most once, whatever path gets there first."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.settled = False

    async def settle(self, action: Callable[[], Awaitable[None]]) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            await action()
        except Exception as exc:  # a closed channel already gave the message back
            log.debug("settle_failed", error=str(exc))

    async def ack(self) -> None:
        await self.settle(self.delivery.ack)

    async def requeue(self) -> None:
        await self.settle(self.delivery.requeue)

    async def dead_letter(self, reason: str) -> None:
        await self.settle(lambda: self.delivery.dead_letter(reason))


class Intake:
    def __init__(
        self,
        store: TaskStore,
        registry: Registry,
        settings: WorkerSettings,
        *,
        worker_id: str,
        lease_seconds: float,
        handler_defaults: Mapping[str, int],
        slots: Slots,
        stats: WorkerStats,
        observer: Observer,
        start_run: Callable[[Task], None],
        accepting: Callable[[], bool],
        changed: Callable[[], None],
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.handler_defaults = handler_defaults
        self._slots = slots
        self.stats = stats
        self.observer = observer
        self._start_run = start_run
        self._accepting = accepting
        self._changed = changed
        self.claiming = 0
        """Groups being claimed: their runs are not registered yet."""
        self._holding: dict[str, float] = {}
        """Queue -> when this worker last saw a task held there (monotonic)."""
        self.peers = Peers(store, worker_id)
        self._log = log.bind(worker_id=worker_id)
        # The claims of concurrent deliveries share statements.
        self._claims: MicroBatcher[int, Task | None] = MicroBatcher(self._claim_many)

    async def take(self, delivery: Delivery) -> None:
        """Take one delivery; whatever is raised, it ends settled."""
        once = _Once(delivery)
        try:
            await self._take(once)
        except Exception as exc:
            self._log.error(
                "delivery_failed",
                error=str(exc),
                error_type=type(exc).__name__,
                exc_info=not isinstance(exc, StoreError),
            )
            await self._requeue_later(once)
        # Cancelled (the consumer's channel closed): that channel gives the message back.

    async def _take(self, once: _Once) -> None:
        """Claim and start every task a message names, then ack it.

        A packed message takes as many free slots as it can use at once and claims
        that group in one statement; it is acked once all its tasks were claimed, put
        back or found not claimable, so a worker that dies first leaves it to be
        redelivered. Tasks that wait longer than ``hold_seconds`` for a slot are handed
        back to the store (dispatched again for any worker) and the message acked, so no
        message stays unacked into RabbitMQ's consumer timeout.
        """
        try:
            messages = TaskMessage.decode_many(once.delivery.body)
        except MalformedMessage as exc:
            self._log.error("message_dead_lettered", reason=str(exc))
            self.stats.dead_lettered += 1
            self.observer.message_dead_lettered("malformed")
            await once.dead_letter(str(exc))
            return
        whole = len(messages) == 1
        unserved = [m for m in messages if m.name not in self.registry.handlers]
        if unserved and not await self._put_back_unserved(once, unserved, whole):
            return
        served = [m for m in messages if m.name in self.registry.handlers]
        hold_until = asyncio.get_running_loop().time() + self.settings.hold_seconds
        done = 0
        while done < len(served):
            wanted = len(served) - done
            if self._slots.ready:  # the common case, without arming a timer
                taken = await self._slots.take(wanted)
            else:
                try:
                    async with asyncio.timeout_at(hold_until):
                        taken = await self._slots.take(wanted)
                except TimeoutError:
                    await self._hand_back(served[done:])
                    break
            if not self._accepting():
                self._slots.give(taken)
                await once.requeue()
                return
            group, done = served[done : done + taken], done + taken
            self.claiming += 1
            # Shielded: closing the consumer channel (stop(), a lost connection) cancels
            # this callback, and a claim already committed must still become a run here,
            # or the task would sit in processing, unheartbeaten, until its lease expired.
            if not await asyncio.shield(self._claim_and_start(once, group, whole)):
                return  # the delivery was settled otherwise
        await once.ack()

    def saw_held(self, queue: str) -> None:
        self._holding[queue] = time.monotonic()

    def may_hold(self, queue: str) -> bool:
        """Whether this worker saw a task held in ``queue`` lately."""
        seen = self._holding.get(queue)
        return seen is not None and time.monotonic() - seen < HOLDING_MEMORY_SECONDS

    async def offer_slot(self, queue: str) -> Handover | None:
        """A run of a gated queue is ending here: its slot, and up to ``HELD_TAKE`` - 1
        free slots beside it (a slot of the cap that a lost wake-up left empty is filled
        too), offered to the best tasks the queue holds. None for a queue not seen holding
        tasks lately (its runs' ends cost no statement) or a worker that stopped taking
        tasks."""
        if not self.may_hold(queue) or not self._accepting():
            return None
        extra = await self._slots.take(HELD_TAKE - 1) if self._slots.ready else 0
        return Handover(queue, extra, functools.partial(self._complete_and_claim, queue))

    async def _complete_and_claim(
        self, queue: str, run: RunRef, result: Any, most: int
    ) -> tuple[bool, list[Task]]:
        self.claiming += 1
        try:
            return await self.store.complete_and_claim_held(
                run, result, queue, most, self.worker_id, self.lease_seconds, self.handler_defaults
            )
        finally:
            self.claiming -= 1

    async def hand_over(self, handover: Handover) -> bool:
        """Start the runs the completion claimed into the offered slots, or, when the
        run ended otherwise, claim the best held tasks now; the slots not used go back.
        With none claimed, the queue is woken for any worker. True when the run's own
        slot went to a new run."""
        claimed = handover.claimed
        if claimed is None:
            self.claiming += 1
            try:
                claimed = await self.store.claim_held(
                    handover.queue,
                    handover.offered,
                    self.worker_id,
                    self.lease_seconds,
                    self.handler_defaults,
                )
            except BaseException:
                self._slots.give(handover.extra)
                raise
            finally:
                self.claiming -= 1
        # The run's own slot is the first one used; the others not used go back.
        self._slots.give(min(handover.extra, handover.offered - len(claimed)))
        for task in claimed:
            self._start_run(task)
        self._changed()
        if claimed:
            self.saw_held(handover.queue)
            return True
        await self.store.wake(handover.queue)
        return False

    async def _claim_many(self, task_ids: Sequence[int]) -> list[Task | None]:
        return await self.store.claim_many(
            task_ids, self.worker_id, self.lease_seconds, self.handler_defaults
        )

    async def _claim_and_start(
        self, once: _Once, group: Sequence[TaskMessage], whole: bool
    ) -> bool:
        """Claim a group of tasks in the slots already taken and start their runs.

        It counts as claiming until the runs are registered, so ``stop()`` sees every
        task this worker claimed. False when the delivery was settled here.
        """
        try:
            try:
                tasks = await self._claims.submit_many([message.task_id for message in group])
            except Exception as exc:
                self._slots.give(len(group))
                self._log.warning(
                    "claim_failed",
                    task_ids=[m.task_id for m in group],
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
                await self._requeue_later(once)
                return False
            unclaimed = [message for message, task in zip(group, tasks, strict=True) if not task]
            self._slots.give(len(unclaimed))
            for task in tasks:
                if task is not None:
                    self._start_run(task)
            if unclaimed:
                return await self._not_claimed(once, unclaimed, whole)
            return True
        finally:
            self.claiming -= 1
            self._changed()

    async def _not_claimed(self, once: _Once, messages: Sequence[TaskMessage], whole: bool) -> bool:
        """Why tasks were not claimed. One that exists but is not claimable (a duplicate,
        stale, cancelled or not yet due) is dropped, and so is one its queue's gates hold
        (the store wakes it); one stored under a name this worker
        has no handler for (the message said otherwise) is put back; a message naming no
        task at all is dead-lettered. False when the delivery was settled here."""
        unserved: list[TaskMessage] = []
        found = {task.id: task for task in await self.store.get_many([m.task_id for m in messages])}
        for message in messages:
            task = found.get(message.task_id)
            if task is None:
                reason = f"task {message.task_id} does not exist"
                self._log.error("message_dead_lettered", task_id=message.task_id, reason=reason)
                self.stats.dead_lettered += 1
                self.observer.message_dead_lettered("missing_task")
                if whole:
                    await once.dead_letter(reason)
                    return False
                await self._dead_letter_part(once, message, reason)
            elif task.status is TaskStatus.PENDING and task.name not in self.registry.handlers:
                unserved.append(TaskMessage(task.id, task.name, task.queue))
            elif task.held is not None:
                self.stats.held += 1  # its queue's gates hold it: woken when a slot frees
                self.saw_held(task.queue)
                self._log.debug("task_held", task_id=task.id, reason=task.held)
            elif is_overdue(task):
                for ended in await self.store.expire_overdue(1, [task.id]):
                    self._log.info("task_expired", task_id=ended.id)
                    self.observer.task_expired(ended)
            else:
                self.stats.skipped += 1
                self._log.info(
                    "delivery_skipped",
                    task_id=message.task_id,
                    redelivered=once.delivery.redelivered,
                    reason="not claimable: duplicate, stale, cancelled, expired or not yet due",
                )
        return not unserved or await self._put_back_unserved(once, unserved, whole)

    async def _put_back_unserved(
        self, once: _Once, messages: Sequence[TaskMessage], whole: bool
    ) -> bool:
        """Tasks this worker has no handler for: left for a worker that has one.

        Dispatched again soon when another live worker serves the handler on its queue,
        else looked at again every few seconds while the task waits (its reason visible
        in the API); it fails only once it has been due ``unserved_fail_after_seconds``
        with no live worker for it. False when the delivery was settled here."""
        fail_after = self.settings.unserved_fail_after_seconds
        for message in messages:
            if await self.peers.serves(message.queue, message.name):
                delay = DECLINE_DELAY_SECONDS
            else:
                task = await self.store.get(message.task_id)
                if task is None or task.status is not TaskStatus.PENDING:
                    continue  # gone or taken meanwhile: nothing to put back
                waited = (datetime.now(UTC) - task.run_at).total_seconds()
                if waited > fail_after:
                    if not await self._fail_unserved(once, task, whole):
                        return False
                    continue
                # Looked at again in a while, or when it would be failed, if sooner.
                delay = min(UNSERVED_RECHECK_SECONDS, max(fail_after - waited, 0.1))
            if await self.store.dispatch_later([message.task_id], delay):
                self.stats.declined += 1
                self._log.info(
                    "task_put_back",
                    task_id=message.task_id,
                    name=message.name,
                    queue=message.queue,
                    reason="no handler of that name in this worker",
                    delay_seconds=delay,
                )
        return True

    async def _fail_unserved(self, once: _Once, task: Task, whole: bool) -> bool:
        reason = (
            f"no live worker has a handler named {task.name!r} for queue {task.queue!r}, "
            f"for {self.settings.unserved_fail_after_seconds:g} s"
        )
        if not await self.store.fail_unrunnable(task.id, reason):
            return True
        self._log.error("message_dead_lettered", task_id=task.id, reason=reason)
        self.stats.dead_lettered += 1
        self.observer.message_dead_lettered("unknown_handler")
        if whole:
            await once.dead_letter(reason)
            return False
        await self._dead_letter_part(once, TaskMessage(task.id, task.name, task.queue), reason)
        return True

    async def _hand_back(self, messages: Sequence[TaskMessage]) -> None:
        """Tasks of a message that waited ``hold_seconds`` for a slot go back to the store
        (dispatched again at once, for whichever worker is free) before it is acked."""
        ids = [message.task_id for message in messages]
        handed = await self.store.dispatch_later(ids, 0)
        self.stats.handed_back += len(handed)
        self._log.info("tasks_handed_back", task_ids=handed, reason="no free slot in time")

    async def _dead_letter_part(self, once: _Once, message: TaskMessage, reason: str) -> None:
        """The store already holds the outcome; the dead letter is a copy for operators."""
        try:
            await once.delivery.dead_letter_part(message, reason)
        except Exception as exc:
            self._log.warning("dead_letter_publish_failed", task_id=message.task_id, error=str(exc))

    async def _requeue_later(self, once: _Once) -> None:
        await asyncio.sleep(REQUEUE_DELAY_SECONDS)  # do not spin on the message
        await once.requeue()
