"""What can go wrong, as exceptions carrying the server's own message.

The API answers errors with a JSON ``{"detail": ...}`` body (a sentence, or the list of
validation issues); ``error_of`` turns such an answer into the exception of its status,
so callers catch ``NotFound`` or ``RateLimited`` instead of reading status codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from krolik_client.retrying import parse_retry_after

if TYPE_CHECKING:
    from krolik_client.models import TaskDetail


class KrolikError(Exception):
    """Base of every error of the client."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.detail = detail if detail is not None else message
        self.request_id = request_id
        """The server's X-Request-ID of the failed request, for its logs."""


class ValidationFailed(KrolikError):
    """The request was refused as not valid (400, 413, 422), or a payload or result does
    not match the handler's types."""


class Unauthorized(KrolikError):
    """No valid API key (401)."""


class Forbidden(KrolikError):
    """The API key's scope does not allow this (403)."""


class NotFound(KrolikError):
    """No such task, queue or schedule (404)."""


class Conflict(KrolikError):
    """The state does not allow it, or an idempotency key was used with another body (409)."""


class RateLimited(KrolikError):
    """Too many requests (429), still so after the client's retries."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerUnavailable(KrolikError):
    """The server, its store or its broker cannot answer now (503, a dropped connection),
    still so after the client's retries."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(KrolikError):
    """Any other answer the client cannot use (500 and the like)."""


class TaskEnded(KrolikError):
    """The task ended without a result; ``task`` is its final record."""

    def __init__(self, message: str, task: TaskDetail) -> None:
        super().__init__(message)
        self.task = task


class TaskFailed(TaskEnded):
    """The handler raised on its last attempt (or no worker had it)."""

    def __init__(self, task: TaskDetail) -> None:
        super().__init__(f"task {task.id} ({task.name}) failed: {task.error}", task)
        self.error = task.error
        self.traceback = task.traceback
        self.attempts = task.attempts


class TaskCancelled(TaskEnded):
    def __init__(self, task: TaskDetail) -> None:
        super().__init__(f"task {task.id} ({task.name}) was cancelled", task)


class TaskExpired(TaskEnded):
    """Not started by its ``expires_at``: it never ran."""

    def __init__(self, task: TaskDetail) -> None:
        super().__init__(f"task {task.id} ({task.name}) expired before it started", task)


class WaitTimeout(KrolikError):
    """The task did not finish within the wait; ``task`` is its record as last read."""

    def __init__(self, task: TaskDetail, timeout: float) -> None:
        super().__init__(f"task {task.id} ({task.name}) is still {task.status} after {timeout:g} s")
        self.task = task
        self.timeout = timeout


_BY_STATUS: dict[int, type[KrolikError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: ValidationFailed,
    422: ValidationFailed,
}


def error_of(response: httpx.Response) -> KrolikError:
    """The exception for an error answer, with the server's message."""
    detail = _detail_of(response)
    message = _message_of(detail) or f"{response.status_code} {response.reason_phrase}"
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    if status in (429, 503):
        kind: type[RateLimited | ServerUnavailable]
        kind = RateLimited if status == 429 else ServerUnavailable
        return kind(
            message,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            status_code=status,
            detail=detail,
            request_id=request_id,
        )
    error = _BY_STATUS.get(status, ServerError)
    return error(message, status_code=status, detail=detail, request_id=request_id)


def _detail_of(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text or None
    return body.get("detail") if isinstance(body, dict) else body


def _message_of(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI's validation issues: where and why
        issues = []
        for issue in detail:
            if isinstance(issue, dict):
                where = ".".join(str(part) for part in issue.get("loc", ()))
                issues.append(f"{where}: {issue.get('msg', '')}" if where else issue.get("msg"))
            else:
                issues.append(str(issue))
        return "; ".join(str(issue) for issue in issues)
    return "" if detail is None else str(detail)
