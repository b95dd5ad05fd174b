"""The Python client of Krolik.

::

    from krolik_client import AsyncClient

    async with AsyncClient("http://127.0.0.1:8000") as client:
        handle = await client.submit(resize, ResizeIn(url=url), delay=10)
        out = await handle.result(timeout=30)  # a ResizeOut, as resize declares
"""

from krolik_client.async_client import AsyncClient
from krolik_client.errors import (
    Conflict,
    Forbidden,
    KrolikError,
    NotFound,
    RateLimited,
    ServerError,
    ServerUnavailable,
    TaskCancelled,
    TaskEnded,
    TaskExpired,
    TaskFailed,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from krolik_client.events import (
    Change,
    Finished,
    Lagged,
    OtherEvent,
    ProgressReported,
    Queued,
    RetryScheduled,
    Started,
    TaskChange,
    TaskEvent,
)
from krolik_client.handles import AsyncTaskHandle, TaskHandle
from krolik_client.models import (
    Attempt,
    Delivery,
    Health,
    Progress,
    QueueDetail,
    QueueLimits,
    QueueStats,
    Schedule,
    ScheduleTick,
    ScheduleTickPage,
    Task,
    TaskDetail,
    TaskStatus,
    Worker,
)
from krolik_client.retrying import Retries
from krolik_client.submission import SubmitOptions
from krolik_client.sync_client import Client
from krolik_client.version import __version__

__all__ = [
    "AsyncClient",
    "AsyncTaskHandle",
    "Attempt",
    "Change",
    "Client",
    "Conflict",
    "Delivery",
    "Finished",
    "Forbidden",
    "Health",
    "KrolikError",
    "Lagged",
    "NotFound",
    "OtherEvent",
    "Progress",
    "ProgressReported",
    "QueueDetail",
    "QueueLimits",
    "QueueStats",
    "Queued",
    "RateLimited",
    "Retries",
    "RetryScheduled",
    "Schedule",
    "ScheduleTick",
    "ScheduleTickPage",
    "ServerError",
    "ServerUnavailable",
    "Started",
    "SubmitOptions",
    "Task",
    "TaskCancelled",
    "TaskChange",
    "TaskDetail",
    "TaskEnded",
    "TaskEvent",
    "TaskExpired",
    "TaskFailed",
    "TaskHandle",
    "TaskStatus",
    "Unauthorized",
    "ValidationFailed",
    "WaitTimeout",
    "Worker",
    "__version__",
]
