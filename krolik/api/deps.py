"""Dependencies of the routes: what the node built, reached through ``app.state.node``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a
thread pool, which costs more than the lookup itself on every request. Each one
still costs FastAPI's dependency solver a node per request, so the hot paths
(task submission, the auth check) read the node through the typed helpers at the
end instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from krolik.broker.base import Broker
from krolik.node import ApiServices, Node
from krolik.relay import OutboxRelay
from krolik.settings import Settings
from krolik.store.base import TaskStore
from krolik.store.replica import StatusReads
from krolik.submit import Submitter


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def api_of(request: Request) -> ApiServices:
    api = node_of(request).api
    assert api is not None, "the app is built from a node with the api role"
    return api


def store_of(request: Request) -> TaskStore:
    return node_of(request).store


def settings_of(request: Request) -> Settings:
    return node_of(request).settings


def submitter_of(request: Request) -> Submitter:
    return api_of(request).submitter


async def _store(request: Request) -> TaskStore:
    return node_of(request).store


async def _reads(request: Request) -> StatusReads:
    return api_of(request).reads


async def _broker(request: Request) -> Broker:
    return node_of(request).broker


async def _settings(request: Request) -> Settings:
    return node_of(request).settings


async def _relay(request: Request) -> OutboxRelay | None:
    return node_of(request).relay


StoreDep = Annotated[TaskStore, Depends(_store)]
ReadsDep = Annotated[StatusReads, Depends(_reads)]
"""List and status reads: from a read replica while it keeps up, else the store."""
BrokerDep = Annotated[Broker, Depends(_broker)]
SettingsDep = Annotated[Settings, Depends(_settings)]
RelayDep = Annotated[OutboxRelay | None, Depends(_relay)]
