"""Connections to a RabbitMQ cluster: try its nodes in turn, and move on when one dies.

aio-pika's robust connection restores channels, exchanges, queues and consumers after
a reconnection, but only ever to the one URL it was given. ``ClusterConnection`` keeps
that machinery and changes where each attempt goes: every connection attempt walks the
node list from the current node until one answers, and a connection that was lost
starts its next attempt at the following node (the lost one is most likely down).

A frozen node is found by AMQP heartbeats: with ``heartbeat=N``, a connection that hears
nothing from its node for (N + 1) x 3 seconds (aiormq's grace) is closed by the client,
and the reconnection goes to another node.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from krolik.log import get_logger

log = get_logger(__name__)


class NodeRing:
    """The cluster's node URLs, and which one is tried next."""

    def __init__(self, urls: Sequence[str], *, shuffle: bool, heartbeat: int | None = None) -> None:
        if not urls:
            raise ValueError("at least one RabbitMQ URL is needed")
        self.urls = [_with_heartbeat(URL(url), heartbeat) for url in urls]
        # Shuffled start, listed order after it: clients spread over the nodes, and each
        # still tries every node once per attempt.
        self.index = random.randrange(len(self.urls)) if shuffle else 0

    @property
    def current(self) -> URL:
        return self.urls[self.index]

    def advance(self) -> URL:
        self.index = (self.index + 1) % len(self.urls)
        return self.current

    def __len__(self) -> int:
        return len(self.urls)


class ClusterConnection(RobustConnection):
    """A robust connection that fails over between the nodes of ``ring``."""

    def __init__(self, ring: NodeRing, **kwargs: Any) -> None:
        super().__init__(ring.current, **kwargs)
        self.ring = ring

    @property
    def node(self) -> str:
        """host:port of the node this connection is (or was last) on."""
        return f"{self.url.host}:{self.url.port}"

    # The robust connection's one attempt to connect (a name-mangled private method of
    # aio-pika's RobustConnection, pinned by tests/unit/test_nodes.py): here it tries
    # each node once, from the current one.
    async def _RobustConnection__connect_transport(self) -> None:
        last_error: BaseException | None = None
        for _ in range(len(self.ring)):
            self.url = self.ring.current
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
            except (TimeoutError, *aio_pika.exceptions.CONNECTION_EXCEPTIONS) as exc:
                last_error = exc
                log.info("rabbitmq_node_unreachable", node=self.node, error=type(exc).__name__)
                self.ring.advance()
                continue
            if len(self.ring) > 1:
                log.info("rabbitmq_connected", node=self.node)
            return
        assert last_error is not None
        raise last_error

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called for a failed attempt too (never connected): the attempt loop moves on.
        if self.connected.is_set() and not (self._close_called or self.is_closed):
            next_url = self.ring.advance()
            log.warning(
                "rabbitmq_connection_lost",
                node=self.node,
                next_node=f"{next_url.host}:{next_url.port}",
            )
        await super()._on_connection_close(closing)


async def connect_cluster(
    ring: NodeRing,
    *,
    timeout: float,
    connection_name: str,
    reconnect_interval: float = 1.0,
) -> AbstractRobustConnection:
    """A robust connection to the first node of ``ring`` (from its current one) that
    answers. The ring outlives the connection: a new one starts where the last left."""
    connection = ClusterConnection(
        ring,
        reconnect_interval=reconnect_interval,
        client_properties={"connection_name": connection_name},
    )
    # The attempt runs as a task of its own that a cancellation does not reach: cancelled
    # inside aio-pika's connect (Python 3.11's wait_for can drop a result that arrives
    # with the cancellation), a connection could be made and never handed to the robust
    # one, and nothing would close it. Cancelled, the caller waits for the attempt (its
    # own timeout bounds it) and closes what it made.
    attempt = asyncio.ensure_future(connection.connect(timeout=timeout))
    try:
        await asyncio.shield(attempt)
    except BaseException:
        # Failed or cancelled half-way (a service stopped while connecting): closed, or
        # its own reconnect loop would go on alone, for ever.
        await asyncio.wait([attempt])
        if not attempt.cancelled():
            attempt.exception()  # retrieved: the caller's error is the one raised
        await _abandon(connection)
        raise
    return connection


async def _abandon(connection: AbstractRobustConnection) -> None:
    """Close a connection nobody will use, whatever state it is in; never raises."""
    closing = asyncio.ensure_future(connection.close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await asyncio.wait([closing])  # cancelled again: the close still completes
    except Exception:  # noqa: S110 - it is being thrown away
        pass


def _with_heartbeat(url: URL, heartbeat: int | None) -> URL:
    """aiormq reads the heartbeat from the URL; one the URL names itself wins."""
    if heartbeat is None or "heartbeat" in url.query:
        return url
    return url.update_query(heartbeat=str(heartbeat))
