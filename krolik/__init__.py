"""Krolik: a task queue that never loses a task and never lets two workers finish one.

Write handlers with the ``task`` decorator and run them with ``krolik worker --app MODULE``::

    from krolik import task

    @task(max_attempts=5, timeout=30)
    async def resize(payload):
        ...
"""

from krolik.enqueue import enqueue, enqueue_many
from krolik.registry import Registry, TaskContext, default_registry, task
from krolik.snooze import Snooze

__version__ = "0.1.0"
__all__ = [
    "Registry",
    "Snooze",
    "TaskContext",
    "__version__",
    "default_registry",
    "enqueue",
    "enqueue_many",
    "task",
]
