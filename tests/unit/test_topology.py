from __future__ import annotations

import pytest

from krolik.broker.topology import QueueSpec, Topology
from krolik.settings import QueueType, RabbitMQSettings


@pytest.fixture
def topology() -> Topology:
    return Topology.from_settings(RabbitMQSettings(), default_queue="default")


def test_from_settings_copies_names():
    settings = RabbitMQSettings(
        queue_name="q", exchange_name="x", routing_key="r", queue_type=QueueType.CLASSIC
    )
    topology = Topology.from_settings(settings, default_queue="main")
    assert topology == Topology(
        exchange="x",
        base_queue="q",
        base_routing_key="r",
        queue_type=QueueType.CLASSIC,
        default_queue="main",
        delivery_limit=20,
    )


def test_default_queue_keeps_seed_names(topology):
    spec = topology.queue("default")
    assert topology.exchange == "task_exchange"
    assert spec.name == "task_queue"
    assert spec.routing_key == "task.new"


def test_other_queues_are_suffixed(topology):
    spec = topology.queue("emails")
    assert spec.name == "task_queue.emails"
    assert spec.routing_key == "task.new.emails"
    assert topology.queue("reports").name == "task_queue.reports"


def test_dead_letter_names(topology):
    assert topology.dead_letter_exchange == "task_exchange.dead"
    assert topology.dead_letter_queue == "task_queue.dead"


@pytest.mark.parametrize("krolik_queue", ["default", "emails"])
def test_queue_arguments(topology, krolik_queue):
    spec = topology.queue(krolik_queue)
    assert isinstance(spec, QueueSpec)
    assert spec.queue_type is QueueType.QUORUM
    assert spec.dead_letter_exchange == "task_exchange.dead"
    assert spec.dead_letter_routing_key == "task_queue.dead"
    assert spec.arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "task_exchange.dead",
        "x-dead-letter-routing-key": "task_queue.dead",
        "x-delivery-limit": 20,
    }
    assert "x-delivery-limit" not in spec.arguments_without_limit


def test_classic_queue_type_is_carried():
    topology = Topology.from_settings(
        RabbitMQSettings(queue_type=QueueType.CLASSIC), default_queue="default"
    )
    assert topology.queue("other").arguments["x-queue-type"] == "classic"


def test_a_different_default_queue_takes_the_base_names():
    topology = Topology.from_settings(RabbitMQSettings(), default_queue="main")
    assert topology.queue("main").name == "task_queue"
    assert topology.queue("default").name == "task_queue.default"


def test_the_delivery_limit_is_for_quorum_queues_only():
    classic = Topology.from_settings(
        RabbitMQSettings(queue_type=QueueType.CLASSIC), default_queue="default"
    )
    assert "x-delivery-limit" not in classic.queue("default").arguments
    unlimited = Topology.from_settings(RabbitMQSettings(delivery_limit=None), "default")
    assert "x-delivery-limit" not in unlimited.queue("default").arguments
