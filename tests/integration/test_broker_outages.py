"""RabbitMQ going away at any moment of connecting is "unavailable", never a crash.

A process waits for an unavailable broker and tries again (``node.py``); any other error
ends it. The outage here lands right after the AMQP connection opened, before the
channels and declarations that follow it.
"""

from __future__ import annotations

from typing import Any

import pytest

from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.errors import BrokerUnavailable
from krolik.settings import RabbitMQSettings
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
