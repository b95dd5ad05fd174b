"""Change notices: every process says which tasks it changed; API processes listen.

A notice names tasks (id, queue, name), never their state: the store holds the truth, and
a listener re-reads what it cares about, once per notice for all its waiters. Notices are
sent after the commit, best effort (the broker's fanout, without confirms): one that is
lost costs a waiter at most the watch's periodic re-read, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from krolik.broker.base import Broker
from krolik.events import Observer
from krolik.log import get_logger
from krolik.store.records import RescuedTask, Task

log = get_logger(__name__)

MAX_PER_NOTICE = 1000
"""Changes one notice carries at most; a busy process sends several."""


@dataclass(frozen=True, slots=True)
class TaskChange:
    task_id: int
    queue: str
    name: str
    webhook: bool = False
    """The change may have ended a task that names a webhook: the senders look now."""


def encode_changes(changes: Sequence[TaskChange]) -> bytes:
    return orjson.dumps(
        [
            [c.task_id, c.queue, c.name, 1] if c.webhook else [c.task_id, c.queue, c.name]
            for c in changes
        ]
    )


def decode_changes(body: bytes) -> list[TaskChange]:
    """The changes of a notice; a body that is not one gives none (it is only a hint)."""
    try:
        items = orjson.loads(body)
        return [
            TaskChange(int(item[0]), str(item[1]), str(item[2]), len(item) > 3 and bool(item[3]))
            for item in items
        ]
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError, KeyError):
        log.warning("notice_unreadable", size=len(body))
        return []


SOON_SECONDS = 0.05
"""How long a change nobody is likely to wait for (a submit, a start, progress) may wait
to share its notice with others: at a high submit rate, a notice per commit would cost
the API more than the commit."""


class ChangeNotices(Observer):
    """Publishes a notice for the tasks this process changed, after each change.

    The hooks are synchronous and cheap: changes are gathered and sent by one task. The
    end of a run (what waiters wait for), a rescue, a cancel or a retry goes out on the
    next turn of the event loop (a batch of completions makes one notice); the rest within
    ``SOON_SECONDS``, together. A slow or absent broker never slows the work."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._pending: dict[int, TaskChange] = {}
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def changed(self, task: Task, *, urgent: bool = True, ended: bool = False) -> None:
        hooked = ended and task.webhook_url is not None
        self._gather(TaskChange(task.id, task.queue, task.name, hooked), urgent=urgent)

    def _gather(self, change: TaskChange, *, urgent: bool = True) -> None:
        earlier = self._pending.get(change.task_id)
        if earlier is not None and earlier.webhook and not change.webhook:
            change = earlier  # what a webhook sender must hear of is kept
        self._pending[change.task_id] = change
        if self._sender is not None and not self._sender.done():
            return  # the sender takes it with what it sends next
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: a hook called from another thread
            self._pending.clear()
            return
        if urgent:
            self._start_sending()
        elif self._timer is None:
            self._timer = loop.call_later(SOON_SECONDS, self._start_sending)

    def _start_sending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        await asyncio.sleep(0)  # let the rest of this turn's changes gather
        while self._pending:
            batch = list(self._pending.values())[:MAX_PER_NOTICE]
            for change in batch:
                del self._pending[change.task_id]
            try:
                await self.broker.publish_notice(encode_changes(batch))
            except Exception as exc:  # a notice is a hint: never let it fail the work
                log.debug("notice_not_sent", error=str(exc), changes=len(batch))

    async def flush(self) -> None:
        """Wait until what was gathered so far is sent (or dropped)."""
        if self._pending:
            self._start_sending()
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await self._sender

    def task_submitted(self, task: Task) -> None:
        self.changed(task, urgent=False)

    def task_started(self, task: Task) -> None:
        self.changed(task, urgent=False)

    def task_finished(self, task: Task, result: str, seconds: float) -> None:
        self.changed(task, ended=result not in ("retried", "released", "snoozed"))

    def task_expired(self, task: Task) -> None:
        self.changed(task, ended=True)

    def task_changed(self, task: Task) -> None:
        self.changed(task, ended=task.status.is_final)

    def task_rescued(self, rescued: RescuedTask) -> None:
        # The rescue does not say whether the task names a webhook: a final one may.
        ended = rescued.status.is_final
        self._gather(TaskChange(rescued.task_id, rescued.queue, rescued.name, ended))
