"""Dependencies of the routes: what the app factory put on ``app.state``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a
thread pool, which costs more than the lookup itself on every request. Each one
still costs FastAPI's dependency solver a node per request, so the hot paths
(task submission, the auth check) read ``app.state`` through the typed helpers at
the end instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from krolik.broker.base import Broker
from krolik.events import Observer
from krolik.relay import OutboxRelay
from krolik.settings import Settings
from krolik.store.base import TaskStore


async def _store(request: Request) -> TaskStore:
    store: TaskStore = request.app.state.store
    return store


async def _broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _relay(request: Request) -> OutboxRelay | None:
    relay: OutboxRelay | None = request.app.state.relay
    return relay


async def _observer(request: Request) -> Observer:
    observer: Observer = request.app.state.observer
    return observer


ObserverDep = Annotated[Observer, Depends(_observer)]
StoreDep = Annotated[TaskStore, Depends(_store)]
BrokerDep = Annotated[Broker, Depends(_broker)]
SettingsDep = Annotated[Settings, Depends(_settings)]
RelayDep = Annotated[OutboxRelay | None, Depends(_relay)]


# -- for hot paths: the same objects without a dependency node each ---------------------
def store_of(request: Request) -> TaskStore:
    store: TaskStore = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def relay_of(request: Request) -> OutboxRelay | None:
    relay: OutboxRelay | None = request.app.state.relay
    return relay


def observer_of(request: Request) -> Observer:
    observer: Observer = request.app.state.observer
    return observer
