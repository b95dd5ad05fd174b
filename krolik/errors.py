"""One error tree for Krolik; each class's docstring is its default message."""

from __future__ import annotations


class KrolikError(Exception):
    """Krolik failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(KrolikError):
    """The configuration is not valid."""


class StoreError(KrolikError):
    """The task store failed."""


class StoreUnavailable(StoreError):
    """The task store cannot be reached."""


class StoreConflict(StoreError):
    """The statement lost against a concurrent one and wrote nothing; it may run again."""


class BrokerError(KrolikError):
    """The message broker failed."""


class BrokerUnavailable(BrokerError):
    """The message broker cannot be reached."""


class TaskNotFound(KrolikError):
    """No task has this id."""


class InvalidTransition(KrolikError):
    """The task is not in a state that allows this change."""


class IdempotencyConflict(InvalidTransition):
    """This idempotency key was used before with a different request body."""


class ScheduleNotFound(KrolikError):
    """No schedule of that name."""


class SubmissionRefused(KrolikError):
    """The submission is not acceptable as it is (a queue not allowed, a batch too big)."""


class QueueFull(KrolikError):
    """The queue holds as many pending tasks as it may; try again later."""


class UnknownHandler(KrolikError):
    """No handler is registered under this name."""


class TaskTimeout(KrolikError):
    """The handler ran longer than its timeout."""
