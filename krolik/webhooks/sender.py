"""The webhook sender: POSTs the record of each ended task to its URL, at least once.

Deliveries are rows the database wrote in the statement that ended each task (see
``store/tables.py``), so they outlive any crash. A sender claims due rows for a while
(SKIP LOCKED: senders of several processes share them), POSTs each one, signed, and
records the answer under the claim's fence (its attempt number): a sender that stalled
past its claim changes nothing, and the row goes to whoever claimed it next. A failed
try waits longer each time (1 s, 2 s, 4 s ... up to an hour, by default) until the delivery's time
runs out (``retry_for_seconds``, 24 h by default); a URL that is not allowed is given up
at once. Requests run concurrently (``concurrency``) and apart from the workers: a slow
or dead endpoint holds one slot per try until its timeout, and never holds up a task.

A sender runs wherever an outbox relay runs. It wakes on a change notice that says a
task with a webhook may have ended, and polls every ``poll_seconds`` in case a notice
was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
import orjson

from krolik import __version__
from krolik.batching import MicroBatcher
from krolik.broker.base import Broker, Subscription
from krolik.errors import BrokerUnavailable, StoreError
from krolik.events import Observer
from krolik.log import get_logger
from krolik.results.notices import decode_changes
from krolik.service import LoopService
from krolik.settings import WebhookSettings
from krolik.store.base import TaskStore
from krolik.store.records import Delivery, DeliveryAnswer, Task
from krolik.webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, sign
from krolik.webhooks.targets import ForbiddenWebhook, WebhookTargets

if TYPE_CHECKING:
    from krolik.tracing.spans import TaskSpans

log = get_logger(__name__)

EVENT = "task.ended"
CLAIM_MARGIN_SECONDS = 5.0
"""A claim lasts the request's timeout and this much more (recording the answer)."""
STOP_GRACE_SECONDS = 5.0
"""How long stop() lets requests in flight finish; the others are tried again later."""
RECONNECT_SECONDS = 2.0


def retry_delay(attempts: int, settings: WebhookSettings) -> float:
    """The wait after the ``attempts``-th failed try: doubling from the base (a second),
    capped (at an hour), less up to a fifth so that failures of one moment spread out."""
    base = min(
        settings.backoff_base_seconds * 2.0 ** max(attempts - 1, 0), settings.backoff_max_seconds
    )
    return base * random.uniform(0.8, 1.0)


class WebhookSender(LoopService):
    name = "webhooks"

    def __init__(
        self,
        store: TaskStore,
        broker: Broker,
        settings: WebhookSettings,
        observer: Observer | None = None,
        *,
        tracing: TaskSpans | None = None,
    ) -> None:
        super().__init__(settings.poll_seconds)
        self.tracing = tracing
        self.store = store
        self.broker = broker
        self.settings = settings
        self.observer = observer or Observer()
        self.targets = WebhookTargets(settings)
        self._key = _signing_key(settings)
        self._client: httpx.AsyncClient | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._recorder: MicroBatcher[DeliveryAnswer, bool] = MicroBatcher(store.record_deliveries)
        self._listener: Subscription | None = None
        self._listening: asyncio.Task[None] | None = None
        self._backlog = False
        self.attempted = 0
        """Tries answered so far (tests and benchmarks)."""

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.timeout_seconds,
                follow_redirects=False,  # a redirect could lead past the allow-list
                limits=httpx.Limits(
                    max_connections=self.settings.concurrency,
                    max_keepalive_connections=self.settings.concurrency,
                ),
                headers={"User-Agent": f"krolik-webhooks/{__version__}"},
            )
        if self._key is None:
            log.warning("webhooks_unsigned", hint="set APP__WEBHOOKS__SIGNING_KEYS")
        super().start()
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen(), name="krolik-webhooks-listen")

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.cancel()
            self._listener = None
        await super().stop()
        if self._in_flight:
            _, unfinished = await asyncio.wait(self._in_flight, timeout=grace_seconds)
            for task in unfinished:  # their claims run out: another try, later or elsewhere
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _listen(self) -> None:
        while self._listener is None:
            try:
                self._listener = await self.broker.listen_notices(self._notice, self.wake)
            except BrokerUnavailable as exc:
                log.warning("webhooks_not_listening", error=str(exc))
                await asyncio.sleep(RECONNECT_SECONDS)

    def _notice(self, body: bytes) -> None:
        """Look now only when a change may have ended a task that names a webhook: every
        submit and start would cost a claim statement each, for nothing."""
        if any(change.webhook for change in decode_changes(body)):
            self.wake()

    # -- the loop ----------------------------------------------------------------------
    async def tick(self) -> bool:
        room = self.settings.concurrency - len(self._in_flight)
        if room <= 0:
            return False  # a request that ends wakes the loop
        claim_seconds = self.settings.timeout_seconds + CLAIM_MARGIN_SECONDS
        due = await self.store.claim_deliveries(room, claim_seconds)
        self._backlog = len(due) == room
        if not due:
            return False
        # Should this fail, the claims run out and the rows are tried again then.
        found = await self.store.get_many(sorted({d.task_id for d in due}))
        tasks = {task.id: task for task in found}
        for delivery in due:
            running = asyncio.create_task(self._deliver(delivery, tasks.get(delivery.task_id)))
            self._in_flight.add(running)
            running.add_done_callback(self._ended)
        return self._backlog

    def _ended(self, running: asyncio.Task[None]) -> None:
        self._in_flight.discard(running)
        if self._backlog:
            self.wake()

    async def _deliver(self, delivery: Delivery, task: Task | None) -> None:
        answer = await self._try(delivery, task)
        outcome = (
            "delivered"
            if answer.delivered
            else "retried"
            if answer.retry_in_seconds is not None
            else "failed"
        )
        try:
            recorded = await self._recorder.submit(answer)
        except StoreError as exc:
            log.warning("webhook_not_recorded", delivery_id=delivery.id, error=str(exc))
            return
        self.attempted += 1
        self.observer.webhook_attempted(outcome, answer.seconds or 0.0)
        if not recorded:
            log.info("webhook_claim_lost", delivery_id=delivery.id, attempt=delivery.attempts)
        elif outcome != "delivered":
            log.warning(
                f"webhook_{outcome}",
                delivery_id=delivery.id,
                task_id=delivery.task_id,
                attempt=delivery.attempts,
                status_code=answer.status_code,
                error=answer.error,
                retry_in_seconds=answer.retry_in_seconds,
            )

    async def _try(self, delivery: Delivery, task: Task | None) -> DeliveryAnswer:
        """One POST of the delivery, and what to record of it."""
        began = time.perf_counter()

        def answer(
            delivered: bool, code: int | None, error: str | None, *, again: bool = True
        ) -> DeliveryAnswer:
            return DeliveryAnswer(
                delivery_id=delivery.id,
                attempt=delivery.attempts,
                delivered=delivered,
                status_code=code,
                error=error,
                seconds=time.perf_counter() - began,
                retry_in_seconds=self._retry_in(delivery) if again and not delivered else None,
            )

        if task is None:
            return answer(False, None, "the task is gone", again=False)
        try:
            target = self.targets.check(delivery.url)
            await self.targets.check_resolved(target)
        except ForbiddenWebhook as exc:
            return answer(False, None, str(exc), again=False)
        except ConnectionError as exc:
            return answer(False, None, str(exc))
        body = delivery_body(delivery, task)
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: str(delivery.id),
            EVENT_HEADER: EVENT,
        }
        if self._key is not None:
            headers |= sign(body, *self._key)
        assert self._client is not None
        try:
            with (
                self.tracing.calling(task, delivery.url, headers)
                if self.tracing is not None
                else contextlib.nullcontext()
            ):
                response = await self._client.post(delivery.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return answer(False, None, f"{type(exc).__name__}: {exc}".rstrip(": "))
        if response.is_success:
            return answer(True, response.status_code, None)
        return answer(False, response.status_code, f"answered HTTP {response.status_code}")

    def _retry_in(self, delivery: Delivery) -> float | None:
        """Seconds until the next try, or None when the delivery's time has run out (the
        last try comes at the deadline itself)."""
        left = delivery.created_at.timestamp() + self.settings.retry_for_seconds - time.time()
        if left <= 0:
            return None
        return min(retry_delay(delivery.attempts, self.settings), left)


def delivery_body(delivery: Delivery, task: Task) -> bytes:
    """What a delivery POSTs: the event, the delivery's id, and the task's record as
    ``GET /tasks/{id}`` shows it (at the time of the try)."""
    from krolik.api.schemas import TaskDetail

    return orjson.dumps(
        {
            "event": EVENT,
            "delivery_id": delivery.id,
            "sent_at": datetime.now(UTC),
            "task": orjson.Fragment(TaskDetail.json_of(task)),
        },
        option=orjson.OPT_UTC_Z,
    )


def _signing_key(settings: WebhookSettings) -> tuple[str, str] | None:
    """(key id, secret) of the key that signs, or None when no key is set."""
    if not settings.signing_keys:
        return None
    key_id = settings.signing_key_id or next(iter(settings.signing_keys))
    return key_id, settings.signing_keys[key_id].get_secret_value()
