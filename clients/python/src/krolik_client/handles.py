"""A submitted task, typed by its handler: ``await handle.result()`` is the handler's
return type, validated, or the exception of how the task ended otherwise."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from krolik_client.errors import TaskCancelled, TaskExpired, TaskFailed
from krolik_client.events import TaskEvent
from krolik_client.handlers import HandlerTypes
from krolik_client.models import Task, TaskDetail, TaskStatus

if TYPE_CHECKING:
    from krolik_client.async_client import AsyncClient
    from krolik_client.sync_client import Client

R = TypeVar("R")


def result_of(task: TaskDetail, types: HandlerTypes) -> Any:
    """The result of a finished task, or the exception of its end."""
    if task.status is TaskStatus.DONE:
        return types.load_result(task.id, task.result)
    if task.status is TaskStatus.FAILED:
        raise TaskFailed(task)
    if task.status is TaskStatus.CANCELLED:
        raise TaskCancelled(task)
    if task.status is TaskStatus.EXPIRED:
        raise TaskExpired(task)
    raise ValueError(f"task {task.id} is {task.status}, not finished")


class HandleBase(Generic[R]):
    def __init__(
        self, task_id: int, types: HandlerTypes, *, task: Task | None = None, created: bool = True
    ) -> None:
        self.id = task_id
        self.name = types.name
        self.task = task
        """The task's record as last read (None until read, after ``submit_many``)."""
        self.created = created
        """False when the submit got back a task the server had already (same key)."""
        self._types = types

    def _known_final(self) -> TaskDetail | None:
        task = self.task
        # A failed task's traceback is only in the full record: read it again then.
        if isinstance(task, TaskDetail) and task.status is TaskStatus.DONE:
            return task
        return None

    def __repr__(self) -> str:
        status = self.task.status if self.task is not None else "unknown"
        return f"<{type(self).__name__} {self.id} {self.name} {status}>"


class AsyncTaskHandle(HandleBase[R]):
    def __init__(
        self,
        client: AsyncClient,
        task_id: int,
        types: HandlerTypes,
        *,
        task: Task | None = None,
        created: bool = True,
    ) -> None:
        super().__init__(task_id, types, task=task, created=created)
        self._client = client

    async def get(self) -> TaskDetail:
        self.task = await self._client.get(self.id)
        return self.task

    async def wait(self, timeout: float | timedelta | None = None) -> TaskDetail:
        """The final record; ``WaitTimeout`` if the task does not finish within ``timeout``
        seconds (None: wait as long as it takes)."""
        self.task = self._known_final() or await self._client.wait(self.id, timeout)
        return self.task

    async def result(self, timeout: float | timedelta | None = None) -> R:
        """The handler's result, validated into its return type; ``TaskFailed``,
        ``TaskCancelled``, ``TaskExpired`` or ``WaitTimeout`` otherwise."""
        result: R = result_of(await self.wait(timeout), self._types)
        return result

    async def cancel(self) -> Task:
        self.task = await self._client.cancel(self.id)
        return self.task

    async def retry(self) -> Task:
        self.task = await self._client.retry(self.id)
        return self.task

    def events(self) -> AsyncGenerator[TaskEvent, None]:
        return self._client.events(self.id)


class TaskHandle(HandleBase[R]):
    def __init__(
        self,
        client: Client,
        task_id: int,
        types: HandlerTypes,
        *,
        task: Task | None = None,
        created: bool = True,
    ) -> None:
        super().__init__(task_id, types, task=task, created=created)
        self._client = client

    def get(self) -> TaskDetail:
        self.task = self._client.get(self.id)
        return self.task

    def wait(self, timeout: float | timedelta | None = None) -> TaskDetail:
        """The final record; ``WaitTimeout`` if the task does not finish within ``timeout``
        seconds (None: wait as long as it takes)."""
        self.task = self._known_final() or self._client.wait(self.id, timeout)
        return self.task

    def result(self, timeout: float | timedelta | None = None) -> R:
        """The handler's result, validated into its return type; ``TaskFailed``,
        ``TaskCancelled``, ``TaskExpired`` or ``WaitTimeout`` otherwise."""
        result: R = result_of(self.wait(timeout), self._types)
        return result

    def cancel(self) -> Task:
        self.task = self._client.cancel(self.id)
        return self.task

    def retry(self) -> Task:
        self.task = self._client.retry(self.id)
        return self.task

    def events(self) -> Generator[TaskEvent, None, None]:
        return self._client.events(self.id)
