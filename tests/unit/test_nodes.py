"""The node list of a RabbitMQ cluster: parsing, order, rotation, the heartbeat."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from krolik.broker.nodes import ClusterConnection, NodeRing
from krolik.settings import RabbitMQSettings

THREE = "amqp://u:p@mq1:5672/,amqp://u:p@mq2:5672/, amqp://u:p@mq3:5672/"


def test_one_url_is_one_node() -> None:
    assert RabbitMQSettings().node_urls == ["amqp://guest:guest@127.0.0.1:5672/"]


def test_comma_separated_urls_are_the_nodes() -> None:
    settings = RabbitMQSettings(url=SecretStr(THREE))
    assert settings.node_urls == [
        "amqp://u:p@mq1:5672/",
        "amqp://u:p@mq2:5672/",
        "amqp://u:p@mq3:5672/",
    ]


@pytest.mark.parametrize("url", ["amqp://a/,mq2:5672", "", " , "])
def test_a_part_that_is_not_an_amqp_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="RabbitMQ URL"):
        RabbitMQSettings(url=SecretStr(url))


def test_the_listed_order_rotates_through_every_node() -> None:
    ring = NodeRing(THREE.split(","), shuffle=False)
    seen = [ring.current.host]
    for _ in range(3):
        seen.append(ring.advance().host)
    assert seen == ["mq1", "mq2", "mq3", "mq1"]


def test_a_shuffled_ring_starts_anywhere_but_keeps_the_order() -> None:
    starts = set()
    for _ in range(60):
        ring = NodeRing(THREE.split(","), shuffle=True)
        first = ring.current.host
        starts.add(first)
        order = [first, ring.advance().host, ring.advance().host]
        assert order in (["mq1", "mq2", "mq3"], ["mq2", "mq3", "mq1"], ["mq3", "mq1", "mq2"])
    assert starts == {"mq1", "mq2", "mq3"}


def test_the_heartbeat_goes_into_each_url_unless_it_names_one() -> None:
    ring = NodeRing(["amqp://mq1/", "amqp://mq2/?heartbeat=30"], shuffle=False, heartbeat=5)
    assert [url.query.get("heartbeat") for url in ring.urls] == ["5", "30"]


def test_the_hook_into_aio_pikas_reconnection_still_exists() -> None:
    """ClusterConnection overrides a private method of aio-pika's RobustConnection: an
    aio-pika that renamed it would quietly stop the failover, so this fails instead."""
    from aio_pika.robust_connection import RobustConnection

    assert hasattr(RobustConnection, "_RobustConnection__connect_transport")
    assert "_RobustConnection__connect_transport" in vars(ClusterConnection)
