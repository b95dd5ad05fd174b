"""The SQL store: every statement group over one engine and dialect.

What is left abstract here is what each database writes its own way: the plain insert
of new tasks, the claims and completions, and the relay's claim and delete of outbox
rows (``store/postgres.py``, ``store/sqlite.py``), plus ``sibling``.
"""

from __future__ import annotations

from krolik.store.base import TaskStore
from krolik.store.sql.deliveries import DeliveryStatements
from krolik.store.sql.flow import FlowStatements
from krolik.store.sql.keys import KeyStatements
from krolik.store.sql.maintenance import MaintenanceStatements
from krolik.store.sql.outbox import OutboxStatements
from krolik.store.sql.retention import RetentionStatements
from krolik.store.sql.runs import RunStatements
from krolik.store.sql.schedules import ScheduleStatements
from krolik.store.sql.stats import StatsStatements
from krolik.store.sql.tasks import TaskStatements
from krolik.store.sql.workers import WorkerStatements


class SqlTaskStore(
    ScheduleStatements,
    TaskStatements,
    RunStatements,
    MaintenanceStatements,
    OutboxStatements,
    KeyStatements,
    WorkerStatements,
    StatsStatements,
    DeliveryStatements,
    RetentionStatements,
    FlowStatements,
    TaskStore,
):
    """The store over a SQLAlchemy async engine; the subclass of each database adds
    its engine, its dialect and its own hot statements."""
