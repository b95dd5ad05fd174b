"""Helpers for an application's own tests: one handler run with a real context, and an
in-process Krolik to enqueue into, run the tasks and ask what was enqueued.

    from krolik.testing import InProcessKrolik, run_handler

    async def test_resize() -> None:
        run = await run_handler(resize, {"url": "a.png"}, attempt=2)
        assert run.result == {"width": 640}
        assert run.progress[-1].fraction == 1.0

    async def test_signup_sends_a_welcome() -> None:
        async with InProcessKrolik(registry) as krolik:
            await signup(krolik, "ada@example.com")     # code that enqueues through it
            [task] = await krolik.assert_enqueued("send_email", payload={"to": "ada@..."})
            assert (await krolik.wait(task.id)).status is TaskStatus.DONE

``InProcessKrolik`` is the embedded mode (``krolik dev``) without HTTP: SQLite in a
folder of its own, the in-process broker, a worker with the application's handlers (and
the built-in ones), the same statements and guarantees as production.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krolik.enqueue import checked_task
from krolik.registry import TASK_NAME_ATTRIBUTE, Handler, Registry, TaskContext
from krolik.snooze import Snooze
from krolik.states import TaskStatus
from krolik.store.records import Task, TaskFilter

ANY = object()
"""Matches any payload in ``assert_enqueued``."""


@dataclass(frozen=True, slots=True)
class Progress:
    fraction: float | None
    message: str | None


@dataclass(slots=True)
class HandlerRun:
    """What one run of a handler did: its result as it would be stored (JSON), or the
    snooze it asked for, and every progress report it made, in order."""

    result: Any = None
    snoozed_seconds: float | None = None
    progress: list[Progress] = field(default_factory=list)


async def run_handler(
    func: Callable[..., Any] | Handler,
    payload: Any = None,
    *,
    name: str | None = None,
    attempt: int = 1,
    max_attempts: int = 3,
    task_id: int = 1,
    queue: str = "default",
) -> HandlerRun:
    """Run ``func`` once as a worker would (its payload type checked, a plain function in
    a thread, a model result as JSON), with a real context; what it raises is raised."""
    if isinstance(func, Handler):
        handler = func
    else:
        task_name = name or getattr(func, TASK_NAME_ATTRIBUTE, None) or func.__name__
        handler = Registry().add(func, name=task_name)
    run = HandlerRun()
    context = TaskContext(
        task_id=task_id,
        name=handler.name,
        queue=queue,
        attempt=attempt,
        max_attempts=max_attempts,
        worker_id="krolik.testing",
        progress_sink=lambda fraction, message: run.progress.append(Progress(fraction, message)),
    )
    try:
        result = await handler.run(payload, context)
    except Snooze as snooze:
        run.snoozed_seconds = snooze.seconds
        return run
    if isinstance(result, Snooze):
        run.snoozed_seconds = result.seconds
    else:
        run.result = result
    return run


class InProcessKrolik:
    """Krolik in this process for a test: enqueue, let the worker run the tasks, look."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 4,
        folder: Path | None = None,
        **settings: Any,
    ) -> None:
        self.registry = registry or Registry()
        self.queues = list(queues)
        """The queues its worker consumes (tasks of others are enqueued but not run)."""
        self.concurrency = concurrency
        self._folder = folder
        self._own_folder = folder is None
        self._settings = settings
        self._embedded: Any = None

    async def __aenter__(self) -> InProcessKrolik:
        from krolik.builtin_tasks import builtin_registry
        from krolik.embedded import Embedded
        from krolik.settings import Settings

        folder = self._folder or Path(tempfile.mkdtemp(prefix="krolik-test-"))
        self._folder = folder
        settings = Settings(embedded={"path": str(folder / "krolik.sqlite3")}, **self._settings)
        self._embedded = Embedded.build(
            settings,
            builtin_registry.merged(self.registry),
            concurrency=self.concurrency,
            queues=self.queues,
        )
        await self._embedded.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._embedded.stop()
        if self._own_folder and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    @property
    def store(self) -> Any:
        """The task store (``krolik.store.base.TaskStore``), for anything not here."""
        return self._embedded.node.store

    async def enqueue(
        self, name: str, payload: Any = None, *, queue: str = "default", **options: Any
    ) -> Task:
        """Submit a task as ``POST /tasks/`` would (its checks, its statement)."""
        new = checked_task(name, payload, queue, **options)
        enqueued = await self._embedded.node.api.submitter.submit(new)
        return enqueued.task  # type: ignore[no-any-return]

    async def wait(self, task_id: int, timeout: float = 10.0) -> Task:
        """The task once it is finished (done, failed, cancelled or expired)."""
        async with asyncio.timeout(timeout):
            while True:
                task: Task | None = await self.store.get(task_id)
                if task is not None and task.status.is_final:
                    return task
                await asyncio.sleep(0.01)

    async def enqueued(
        self, name: str | None = None, *, queue: str | None = None, status: TaskStatus | None = None
    ) -> list[Task]:
        """The tasks in the store (oldest first), by name, queue and status if given."""
        found: list[Task] = await self.store.list_tasks(
            TaskFilter(name=name, queue=queue, status=status), before_id=None, limit=10_000
        )
        return sorted(found, key=lambda task: task.id)

    async def assert_enqueued(
        self, name: str, *, payload: Any = ANY, queue: str | None = None, count: int | None = None
    ) -> list[Task]:
        """The tasks of ``name`` (with that payload, in that queue) in the store so far,
        however they were enqueued (by the code under test, by handlers); an
        AssertionError saying what there is when there is none (or not ``count``)."""
        candidates = await self.enqueued(name, queue=queue)
        matching = [task for task in candidates if payload is ANY or task.payload == payload]
        if (count is None and not matching) or (count is not None and len(matching) != count):
            wanted = "at least one" if count is None else str(count)
            seen = [(task.name, task.queue, task.payload) for task in await self.enqueued()]
            raise AssertionError(
                f"expected {wanted} task(s) {name!r}"
                + ("" if payload is ANY else f" with payload {payload!r}")
                + ("" if queue is None else f" in queue {queue!r}")
                + f", found {len(matching)}; enqueued: {seen}"
            )
        return matching
