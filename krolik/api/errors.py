"""Domain errors mapped to HTTP answers, in one place. No traceback ever reaches a client."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from krolik.api.auth import AuthError
from krolik.api.schemas import Problem
from krolik.errors import (
    BrokerUnavailable,
    InvalidTransition,
    QueueFull,
    ScheduleNotFound,
    StoreConflict,
    StoreUnavailable,
    SubmissionRefused,
    TaskNotFound,
)
from krolik.log import get_logger
from krolik.rate_limit import RateLimited

log = get_logger(__name__)
RETRY_AFTER_SECONDS = "5"
RETRY_CONFLICT_AFTER_SECONDS = "1"

GUARDED_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid API key (with APP__AUTH__ENABLED)"},
    403: {"model": Problem, "description": "The API key's scope does not allow this"},
    429: {"model": Problem, "description": "Rate limit exceeded; see Retry-After"},
    503: {
        "model": Problem,
        "description": "The store or broker is unavailable, or the queue is full; see Retry-After",
    },
}
"""What every route behind an API key may answer besides its own results."""


class BadRequest(Exception):
    """A request that validation could not catch by its shape (e.g. a bad cursor)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each invalid input back, and answers 500 when one
        # holds NaN or Infinity (Python's JSON parser accepts them, JSON has neither) or
        # is nested too deep to encode. The caller has its input: say where and why only.
        errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(ScheduleNotFound)
    async def no_schedule(_: Request, exc: ScheduleNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(TaskNotFound)
    async def not_found(_: Request, exc: TaskNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(InvalidTransition)
    async def conflict(_: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=400)

    @app.exception_handler(AuthError)
    async def unauthorized(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RateLimited)
    async def too_many(_: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(
            {
                "detail": f"rate limit exceeded ({exc.limit}); retry after "
                f"{exc.retry_after_seconds} s"
            },
            status_code=429,
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )

    @app.exception_handler(SubmissionRefused)
    async def refused(_: Request, exc: SubmissionRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
        )

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store_unavailable", error=str(exc))
        return JSONResponse(
            {"detail": "the task store is unavailable, try again shortly"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(StoreConflict)
    async def store_busy(_: Request, exc: StoreConflict) -> JSONResponse:
        # Retried already where retrying is safe (the group commit); nothing was written.
        log.warning("store_conflict", error=str(exc))
        return JSONResponse(
            {"detail": "the task store is busy with a conflicting change, try again"},
            status_code=503,
            headers={"Retry-After": RETRY_CONFLICT_AFTER_SECONDS},
        )

    @app.exception_handler(BrokerUnavailable)
    async def broker_down(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": "the message broker is unavailable, try again shortly"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)
