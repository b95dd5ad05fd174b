"""Settings, read once at start-up from the environment or a `.env` file.

Names keep the seed's shape: prefix ``APP__`` and ``__`` between sections, so
``APP__DB__URL``, ``APP__RABBITMQ__URL``, ``APP__RABBITMQ__QUEUE_NAME`` and
``APP__DEBUG`` work unchanged. Nothing here connects to anything.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class QueueType(StrEnum):
    QUORUM = "quorum"
    CLASSIC = "classic"


class DatabaseSettings(BaseModel):
    url: SecretStr = SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    """One server, or several in libpq's form (``user@host1:5432,host2:5432/db`` with
    ``?target_session_attrs=read-write``): each new connection goes to the one that
    takes writes, so a promoted replica is found without a restart."""
    pool_size: int = Field(10, ge=1)
    max_overflow: int = Field(10, ge=0)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    pgbouncer: bool = False
    """Behind PgBouncer in transaction (or statement) pooling mode: no prepared statement
    outlives its statement, as the next may run on another server connection."""
    read_url: SecretStr | None = None
    """A streaming replica for the API's list and status reads; None: all on ``url``."""
    read_max_lag_seconds: float = Field(1.0, ge=0)
    """A replica further behind than this is passed over for the primary."""
    read_check_seconds: float = Field(1.0, gt=0)
    """How often a replica's lag is measured (by the read that finds the last too old)."""

    @property
    def dsn(self) -> str:
        """The URL as SQLAlchemy parses it (several hosts become ``?host=`` parameters)."""
        return hosts_as_query(self.url.get_secret_value())

    @property
    def read_dsn(self) -> str | None:
        return None if self.read_url is None else hosts_as_query(self.read_url.get_secret_value())


def hosts_as_query(url: str) -> str:
    """libpq's multi-host URL (``user@h1:5432,h2:5433/db``) in the form SQLAlchemy's
    asyncpg dialect parses (``user@/db?host=h1:5432&host=h2:5433``); others unchanged."""
    scheme, separator, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not separator or "," not in hosts:
        return url
    path, _, query = tail.partition("?")
    params = "&".join(f"host={host.strip()}" for host in hosts.split(",") if host.strip())
    return f"{scheme}://{userinfo}{at}/{path}?{params}{'&' + query if query else ''}"


class RabbitMQSettings(BaseModel):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    """One node's URL, or the URLs of a cluster's nodes separated by commas."""
    queue_name: str = "task_queue"
    exchange_name: str = "task_exchange"
    routing_key: str = "task.new"
    prefetch_count: int = Field(5, ge=1)
    queue_type: QueueType = QueueType.QUORUM
    publish_timeout_seconds: float = Field(5.0, gt=0)
    heartbeat_seconds: int = Field(5, ge=0)
    """AMQP heartbeat: a node silent for (this + 1) x 3 s counts as gone and the connection
    moves to another node (a frozen node is found only so); 0 turns heartbeats off."""
    shuffle_nodes: bool = True
    """Start each connection at a random node of ``url`` (clients spread over the cluster);
    false: always at the first listed."""
    delivery_limit: int | None = Field(20, ge=1)
    """Quorum queues: a message delivered this many times without being settled (every
    worker that took it died) is dead-lettered by RabbitMQ. Applies to queues declared
    from now on; None: no limit."""

    @field_validator("url")
    @classmethod
    def _node_urls_are_amqp(cls, url: SecretStr) -> SecretStr:
        for node in _split_urls(url.get_secret_value()):
            if not node.startswith(("amqp://", "amqps://")):
                raise ValueError(
                    "each RabbitMQ URL must start with amqp:// or amqps:// "
                    "(several nodes: separate full URLs with commas)"
                )
        return url

    @property
    def dsn(self) -> str:
        return self.url.get_secret_value()

    @property
    def node_urls(self) -> list[str]:
        """The URL of every node named in ``url``."""
        return _split_urls(self.dsn)


def _split_urls(value: str) -> list[str]:
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise ValueError("no RabbitMQ URL given")
    return urls


class WorkerSettings(BaseModel):
    concurrency: int = Field(8, ge=1)
    lease_seconds: float = Field(30.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    queues: list[str] = Field(default_factory=lambda: ["default"])
    unserved_fail_after_seconds: float = Field(900.0, gt=0)
    """A task whose handler no live worker has stays pending (a rolling deploy, mixed
    worker pools) and fails only once it has been due this long."""
    hold_seconds: float = Field(60.0, gt=0)
    """How long a received message may wait for a free slot; then its tasks are handed
    back (dispatched again for any worker) and it is acked, well before RabbitMQ's
    consumer timeout would close the channel."""
    blocked_loop_warn_seconds: float = Field(1.0, gt=0)
    """Warn (and count) when a handler kept the worker's event loop from running this
    long: its other tasks stalled meanwhile (the leases are kept from a thread)."""


class RetrySettings(BaseModel):
    default_max_attempts: int = Field(3, ge=1)
    backoff_base_seconds: float = Field(1.0, ge=0)
    backoff_max_seconds: float = Field(300.0, ge=0)


class RelaySettings(BaseModel):
    enabled: bool = True
    """Run the outbox relay inside the API process."""
    batch_size: int = Field(200, ge=1)
    poll_seconds: float = Field(0.5, gt=0)
    claim_seconds: float = Field(30.0, gt=0)
    """How long a relay owns the outbox rows it picked, or was handed by its API, before
    another may take them."""
    tasks_per_message: int = Field(10, ge=1, le=10_000)
    """Due tasks of one queue that may share one broker message. A worker's prefetch
    counts tasks (about max(prefetch_count, concurrency)), so this also bounds how many
    tasks one worker holds back from the others; 1 sends one message per task."""


class MaintenanceSettings(BaseModel):
    rescue_interval_seconds: float = Field(5.0, gt=0)
    redispatch_after_seconds: float = Field(300.0, gt=0)
    """A due pending task older than this with nothing in the outbox is dispatched again."""


KEEP_FOREVER = frozenset({"forever", "never", "none", "null"})
"""What a retention setting may say instead of seconds: finished tasks are never deleted."""
Retention = float | None


def _retention(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in KEEP_FOREVER:
        return None
    return value


class RetentionSettings(BaseModel):
    """How long finished tasks (with their attempts, webhook deliveries and outbox rows)
    are kept before the cleaner deletes them; ``forever`` (or null) keeps them."""

    enabled: bool = True
    done_seconds: Retention = Field(7 * 86400.0, gt=0)
    failed_seconds: Retention = Field(30 * 86400.0, gt=0)
    cancelled_seconds: Retention = Field(30 * 86400.0, gt=0)
    expired_seconds: Retention = Field(30 * 86400.0, gt=0)
    queues: dict[str, dict[str, Retention]] = Field(default_factory=dict)
    """Per queue, by status, in seconds (or null: forever), e.g.
    ``{"emails": {"done": 3600}}``; a status not named takes the setting above."""
    interval_seconds: float = Field(60.0, gt=0)
    """How often the cleaner looks; it goes on at once while batches come back full."""
    batch_size: int = Field(500, ge=1, le=100_000)
    """Most tasks deleted per statement: each batch holds its row locks only that long."""
    batch_seconds_limit: float = Field(0.05, gt=0)
    """Most time one batch may hold its row locks: on PostgreSQL a batch statement
    that runs longer is cancelled (nothing deleted) and the next batch is halved."""
    busy_share: float = Field(0.1, gt=0, le=1)
    """While a backlog lasts, the share of the time the cleaner spends deleting: after a
    batch of t seconds it waits t x (1 / share - 1), so the tasks in flight keep the
    database (1: no pause)."""

    _forever = field_validator(
        "done_seconds", "failed_seconds", "cancelled_seconds", "expired_seconds", mode="before"
    )(_retention)

    @field_validator("queues", mode="before")
    @classmethod
    def _queue_rules(cls, value: object) -> object:
        if isinstance(value, dict):
            return {
                queue: {status: _retention(age) for status, age in rules.items()}
                if isinstance(rules, dict)
                else rules
                for queue, rules in value.items()
            }
        return value

    @model_validator(mode="after")
    def _known_statuses(self) -> Self:
        for queue, rules in self.queues.items():
            unknown = set(rules) - set(FINISHED_STATUSES)
            if unknown:
                raise ValueError(
                    f"retention of queue {queue!r} names {sorted(unknown)}; the statuses "
                    f"kept are {', '.join(FINISHED_STATUSES)}"
                )
            if any(age is not None and age <= 0 for age in rules.values()):
                raise ValueError(f"retention of queue {queue!r} must be positive seconds")
        return self

    def of(self, status: str, queue: str | None = None) -> Retention:
        """How long tasks of ``status`` (in ``queue``) are kept; None: forever."""
        if queue is not None and status in self.queues.get(queue, {}):
            return self.queues[queue][status]
        value: Retention = getattr(self, f"{status}_seconds")
        return value


FINISHED_STATUSES = ("done", "failed", "cancelled", "expired")
"""The final statuses, as the retention settings name them."""


class SchedulerSettings(BaseModel):
    enabled: bool = True
    """Every worker runs a scheduler (``krolik scheduler`` runs one on its own)."""
    poll_seconds: float = Field(1.0, gt=0)
    """How often due schedules are looked for: a tick makes its task up to this late."""
    batch_size: int = Field(100, ge=1, le=10_000)
    """Due schedules taken per transaction."""


class QueueLimitDefaults(BaseModel):
    """A queue's limits as the settings give them (see ``FlowSettings``)."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(None, ge=0, le=1_000_000)
    max_running_per_key: int | None = Field(None, ge=1, le=1_000_000)
    rate_limit: str | None = None
    default_priority: int | None = Field(None, ge=-1000, le=1000)

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        from krolik.flow import Rate

        return None if value is None else Rate.parse(value).text


class FlowSettings(BaseModel):
    queues: dict[str, QueueLimitDefaults] = Field(default_factory=dict)
    """Queue limits (and default priorities) to start from, e.g. ``{"partner":
    {"max_running": 5, "rate_limit": "60/minute"}, "urgent": {"default_priority": 10}}``:
    written by each worker at start while the queue's limits are still
    the settings' (a ``PATCH /queues/{name}`` takes them over from then on)."""


class MetricsSettings(BaseModel):
    stuck_after_seconds: float = Field(600.0, gt=0)
    """A task processing longer than this counts as stuck (the seed's 10 minutes)."""
    refresh_seconds: float = Field(5.0, ge=0)
    """Gauges read from the store are reused for this long between scrapes."""


class ApiSettings(BaseModel):
    max_payload_bytes: int = Field(1_048_576, ge=1)
    default_page_size: int = Field(50, ge=1, le=1000)
    max_batch_size: int = Field(1000, ge=1, le=10_000)
    """Most tasks one ``POST /tasks/batch`` may create."""
    max_pending_per_queue: int | None = Field(None, ge=1)
    """Refuse new tasks (503) for a queue holding this many pending tasks; None: no bound."""
    queues: list[str] | None = None
    """The queues tasks may be submitted to; None: any well-formed name."""


class AuthSettings(BaseModel):
    enabled: bool = False
    """Require an API key (``Authorization: Bearer ...``) on every endpoint but health
    and metrics. Keys are made with ``krolik keys create``."""
    cache_seconds: float = Field(10.0, ge=0)
    """A checked key is trusted this long in each process; a revoke takes effect within it."""


class RateLimitSettings(BaseModel):
    limit: str | None = None
    """Requests allowed per API key (or client address without keys), in the ``limits``
    notation, e.g. ``"100/second;5000/minute"``; None: no limit."""
    storage_url: str = "memory://"
    """``memory://`` counts per process; a shared backend (e.g. ``redis://host:6379``,
    with ``pip install limits[async-redis]``) makes the limit cluster-wide."""


class ResultsSettings(BaseModel):
    """Waiting for tasks and following them (``?wait=``, the event streams)."""

    max_wait_seconds: float = Field(60.0, gt=0, le=3600)
    """The longest ``?wait=`` a request may ask for; a longer one waits this long."""
    recheck_seconds: float = Field(5.0, gt=0)
    """How often each API process re-reads every task someone waits for or follows (one
    query for all): what a lost change notice could delay, at most."""
    keepalive_seconds: float = Field(15.0, gt=0)
    """An event stream quiet for this long gets a comment line, so proxies keep it open."""


class WebhookSettings(BaseModel):
    """Calling a URL of the user's when a task ends (``webhook_url``)."""

    queue_urls: dict[str, str] = Field(default_factory=dict)
    """The webhook of each queue's tasks that name none of their own."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Where webhooks may go: host names (``hooks.example.com``, ``*.example.com``) and
    networks (``10.1.0.0/16``, ``127.0.0.1/32``). Empty: any host on a public address.
    An internal address (loopback, private, link-local, ...) is refused unless an entry
    names it, whether it is in the URL or what the host name resolves to."""
    signing_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Key id -> secret. Every delivery is signed with ``signing_key_id``'s secret; the
    others stay known for rotation (a receiver verifies with whichever id it is told)."""
    signing_key_id: str | None = None
    """The key that signs; None: the only one (or the first, in order, of several)."""
    retry_for_seconds: float = Field(86400.0, gt=0)
    """How long a delivery that keeps failing is tried again, from the task's end."""
    backoff_base_seconds: float = Field(1.0, gt=0)
    """The wait after a delivery's first failed try; it doubles after each one ..."""
    backoff_max_seconds: float = Field(3600.0, gt=0)
    """... up to this."""
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    """One request's time to connect, send and be answered."""
    concurrency: int = Field(32, ge=1, le=1000)
    """Requests in flight at once, per sending process."""
    poll_seconds: float = Field(1.0, gt=0)
    """How often the sender looks for due deliveries without being woken."""

    @model_validator(mode="after")
    def _key_known(self) -> Self:
        if self.signing_key_id is not None and self.signing_key_id not in self.signing_keys:
            raise ValueError(f"signing_key_id {self.signing_key_id!r} is not in signing_keys")
        return self


class TracingSettings(BaseModel):
    """OpenTelemetry spans of submits, runs and webhook calls (the ``otel`` extra)."""

    enabled: bool = False
    """Make spans; without the extra installed, a warning and none."""
    service_name: str | None = None
    """The ``service.name`` of a tracer provider Krolik sets up itself (when the process
    has none configured): ``OTEL_SERVICE_NAME``, else ``krolik``."""


class EmbeddedSettings(BaseModel):
    """The embedded mode (``krolik dev``): SQLite file and in-process broker."""

    path: str = "krolik.sqlite3"
    """The SQLite file, relative to the current folder unless absolute."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_prefix="APP__",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,  # APP__X= (empty) means the default, as in compose files
    )

    debug: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    """None: DEBUG with ``debug``, else INFO. A finished run is logged at DEBUG only."""
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    rabbitmq: RabbitMQSettings = Field(default_factory=RabbitMQSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    flow: FlowSettings = Field(default_factory=FlowSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    results: ResultsSettings = Field(default_factory=ResultsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    default_queue: str = "default"
