"""``Client``, the blocking twin, over TCP (run in a thread while the app serves)."""

from __future__ import annotations

import asyncio

import pytest
from krolik_client import Client, Finished, NotFound, Queued, TaskFailed, TaskStatus

from tests.client.conftest import QUICK_RETRIES
from tests.client.handlers import Invoice, Receipt, bill, explode, measure, nap


def _story() -> None:
    with Client(retries=QUICK_RETRIES) as client:  # the URL from KROLIK_URL
        handle = client.submit(bill, Invoice(customer="cy", cents=[5, 6]))
        assert handle.result(timeout=10) == Receipt(customer="cy", total_cents=11)
        events = list(handle.events())
        assert [type(events[0]), type(events[-1])] == [Queued, Finished]

        failing = client.submit(explode, "y")
        with pytest.raises(TaskFailed, match="cannot handle y"):
            failing.result(timeout=10)

        many = client.submit_many(measure, ["1x2", "3x4"])
        assert [h.result(timeout=10).height for h in many] == [2, 4]

        later = client.submit(nap, 0.0, delay=60)
        assert later.cancel().status is TaskStatus.CANCELLED
        assert client.wait(later, timeout=1).status is TaskStatus.CANCELLED
        assert next(task.id for task in client.list(page_size=1)) == later.id
        with pytest.raises(NotFound):
            client.get(987654)
        assert client.health().status == "ok"


async def test_the_sync_client_does_what_the_async_one_does(
    served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KROLIK_URL", served)
    await asyncio.to_thread(_story)
