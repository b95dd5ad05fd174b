"""RabbitMQ going away at any moment of connecting is "unavailable", never a crash.

A process waits for an unavailable broker and tries again (``node.py``); any other error
ends it. The outage here lands right after the AMQP connection opened, before the
channels and declarations that follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from pydantic import SecretStr

from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.broker.wire import TaskMessage
from krolik.errors import BrokerUnavailable
from krolik.settings import RabbitMQSettings
from tests.conftest import close_and_delete
from tests.integration.conftest import topology_of
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.integration


def cut_after_opening(broker: RabbitMQBroker, proxy: TcpProxy) -> None:
    opened = broker._connect

    async def open_then_cut() -> Any:
        connection = await opened()
        await proxy.cut()
        return connection

    broker._connect = open_then_cut  # type: ignore[method-assign]


def broker_through(settings: Any, proxy: TcpProxy) -> RabbitMQBroker:
    through = RabbitMQSettings.model_validate(
        {
            **settings.rabbitmq.model_dump(),
            "url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
            "publish_timeout_seconds": 1.0,
        }
    )
    return RabbitMQBroker(through, topology_of(settings))


async def test_an_outage_while_declaring_is_unavailable(settings, rabbit_proxy) -> None:
    broker = broker_through(settings, rabbit_proxy)
    cut_after_opening(broker, rabbit_proxy)
    with pytest.raises(BrokerUnavailable):
        await broker.connect()
    await rabbit_proxy.restore()
    broker._connect = RabbitMQBroker._connect.__get__(broker)  # type: ignore[method-assign]
    await broker.connect()  # and it can connect again
    await broker.ping()
    await broker.close()


async def test_an_outage_while_subscribing_is_unavailable(settings, rabbit_proxy) -> None:
    broker = broker_through(settings, rabbit_proxy)
    await broker.connect()

    async def ignore(_: Any) -> None:
        return None

    cut_after_opening(broker, rabbit_proxy)
    with pytest.raises(BrokerUnavailable):
        await broker.consume(["default"], 2, ignore)
    await rabbit_proxy.restore()
    await broker.close()


async def test_publishing_to_a_frozen_node_is_unavailable_then_resumes(
    settings, rabbit_proxy
) -> None:
    """A node that stops answering (SIGSTOP) without closing its sockets: every publish
    meanwhile comes back as unavailable, never as an exception of another kind (a
    CancelledError out of the AMQP client once ended the relay's loop), and publishing
    resumes once the node answers again."""
    broker = broker_through(settings, rabbit_proxy)
    broker.settings = broker.settings.model_copy(update={"heartbeat_seconds": 1})
    await broker.connect()
    message = TaskMessage(task_id=1, queue=settings.default_queue, name="x")
    assert (await broker.publish([message])).confirmed == (True,)

    rabbit_proxy.freeze()
    loop = asyncio.get_running_loop()
    frozen_until = loop.time() + 9  # past the heartbeat's (1 + 1) x 3 s grace
    outcomes: list[str] = []
    while loop.time() < frozen_until:
        try:
            result = await broker.publish([message])
            outcomes.append("confirmed" if all(result.confirmed) else "unconfirmed")
        except BrokerUnavailable:
            outcomes.append("unavailable")
            await asyncio.sleep(0.2)
    rabbit_proxy.thaw()
    assert "unavailable" in outcomes

    async def confirms() -> bool:
        try:
            return (await broker.publish([message])).confirmed == (True,)
        except BrokerUnavailable:
            await asyncio.sleep(0.2)
            with contextlib.suppress(BrokerUnavailable):
                await broker.connect()  # as the relay does after an outage
            return False

    resumed_by = loop.time() + 20
    while not await confirms():
        assert loop.time() < resumed_by, "publishing did not resume after the thaw"
    await close_and_delete([broker], settings)


async def test_a_dead_first_node_is_skipped(settings) -> None:
    """With several URLs, a node that refuses connections is passed over for the next."""
    from tests.support.processes import free_port

    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    live = settings.rabbitmq.dsn
    nodes = settings.rabbitmq.model_copy(
        update={"url": SecretStr(f"{dead},{live}"), "shuffle_nodes": False}
    )
    broker = RabbitMQBroker(nodes, topology_of(settings))
    await broker.connect()
    await broker.ping()
    message = TaskMessage(task_id=1, queue=settings.default_queue, name="x")
    assert (await broker.publish([message])).confirmed == (True,)
    await close_and_delete([broker], settings)


async def test_a_publisher_that_stalls_while_up_moves_to_the_next_node(
    settings, rabbit_proxy
) -> None:
    """A connection that stays open but answers nothing (no heartbeat notices it here:
    heartbeats are off) is replaced after a few timed-out publishes, on the next node."""
    frozen = f"amqp://guest:guest@127.0.0.1:{rabbit_proxy.port}/"
    nodes = settings.rabbitmq.model_copy(
        update={
            "url": SecretStr(f"{frozen},{settings.rabbitmq.dsn}"),
            "shuffle_nodes": False,
            "heartbeat_seconds": 0,
            "publish_timeout_seconds": 0.5,
        }
    )
    broker = RabbitMQBroker(nodes, topology_of(settings))
    await broker.connect()
    message = TaskMessage(task_id=1, queue=settings.default_queue, name="x")
    assert (await broker.publish([message])).confirmed == (True,)
    rabbit_proxy.freeze()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            try:
                if (await broker.publish([message])).confirmed == (True,):
                    break
            except BrokerUnavailable:
                with contextlib.suppress(BrokerUnavailable):
                    await broker.connect()  # as the relay does after an outage
            assert loop.time() < deadline, "the publisher stayed on the stalled node"
    finally:
        rabbit_proxy.thaw()
    await close_and_delete([broker], settings)


async def test_a_listen_cancelled_at_any_moment_leaves_no_connection_behind(
    make_broker: Any,
) -> None:
    """A service stopped while its notice listener connects (a quick test, a process told
    to stop at start-up) cancels ``listen_notices`` mid-way: the connection it had begun
    must be closed, not left reconnecting on its own forever."""
    broker = make_broker()
    await broker.connect()
    ours = asyncio.current_task()
    before = asyncio.all_tasks()
    for delay in (0, 0.001, 0.003, 0.006, 0.01, 0.02, 0.04):
        listening = asyncio.create_task(broker.listen_notices(lambda _body: None, lambda: None))
        await asyncio.sleep(delay)
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            subscription = await listening
            await subscription.cancel()  # it finished first: closed the normal way
    # A closed connection's own tasks end soon after; an abandoned one's run on forever.
    deadline = asyncio.get_running_loop().time() + 5
    while left := [t for t in asyncio.all_tasks() - before if t is not ours and not t.done()]:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert left == [], f"tasks of abandoned connections still run: {left}"
