"""The handler of ``bench/schedulers.py``: a schedule declared in code, every second,
catching up every missed tick (so a tick none of the schedulers made would show)."""

from __future__ import annotations

from typing import Any

from krolik import Registry

registry = Registry()


@registry.task(name="bench.tick", every=1, catch_up="all", payload={"from": "bench"})
async def tick(payload: Any) -> Any:
    return payload
