"""The workers the store's registry knows: what each serves, how busy it is, when seen."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from krolik.api.auth import ReadAccess
from krolik.api.deps import StoreDep
from krolik.api.errors import GUARDED_RESPONSES
from krolik.store.records import WorkerInfo

router = APIRouter(tags=["workers"], responses=GUARDED_RESPONSES)


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    handlers: list[str] = Field(description="The handler names it can run.")
    concurrency: int
    running: int = Field(description="Runs it held at its last heartbeat.")
    started_at: datetime
    last_seen_at: datetime
    expires_at: datetime = Field(description="It counts as alive until then.")
    alive: bool

    @classmethod
    def of(cls, worker: WorkerInfo, now: datetime) -> WorkerOut:
        return cls(
            id=worker.id,
            host=worker.host,
            pid=worker.pid,
            queues=worker.queues,
            handlers=worker.handlers,
            concurrency=worker.concurrency,
            running=worker.running,
            started_at=worker.started_at,
            last_seen_at=worker.last_seen_at,
            expires_at=worker.expires_at,
            alive=worker.expires_at > now,
        )


@router.get("/workers", response_model=list[WorkerOut], summary="Worker processes, oldest first")
async def list_workers(
    store: StoreDep,
    _: ReadAccess,
    include_dead: Annotated[
        bool,
        Query(alias="all", description="Also workers not seen for a while (killed, lost)."),
    ] = False,
) -> list[WorkerOut]:
    now = datetime.now(UTC)
    found = await store.list_workers(include_expired=include_dead)
    return [WorkerOut.of(worker, now) for worker in found]
