"""Builds the store and broker that the settings ask for; the one place that picks them."""

from __future__ import annotations

from krolik.broker.base import Broker
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.broker.topology import Topology
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.postgres import PostgresTaskStore


def build_store(settings: Settings) -> TaskStore:
    return PostgresTaskStore.from_settings(settings.db)


def build_broker(settings: Settings) -> Broker:
    return RabbitMQBroker(
        settings.rabbitmq, Topology.from_settings(settings.rabbitmq, settings.default_queue)
    )
