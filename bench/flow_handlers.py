"""The handler of ``bench/flow.py``: each run counts itself in a counter shared by every
worker process (a file under an exclusive lock), and fails if it finds more running than
the cap it was given: the cap is asserted by the handlers themselves."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Any

from krolik import Registry

registry = Registry()
COUNTER = Path(os.environ.get("BENCH_FLOW_COUNTER", "flow-counter"))


def _add(delta: int) -> tuple[int, int]:
    """Running now and the most seen, after adding ``delta``; under the file's lock."""
    with COUNTER.open("a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        now, most = (int(x) for x in (file.read().split() or ["0", "0"]))
        now += delta
        most = max(most, now)
        file.seek(0)
        file.truncate()
        file.write(f"{now} {most}")
        return now, most


@registry.task(name="bench.counted", max_attempts=1)
async def counted(payload: Any) -> Any:
    now, _ = await asyncio.to_thread(_add, 1)
    try:
        if now > payload["cap"]:
            raise RuntimeError(f"{now} running, over the cap of {payload['cap']}")
        await asyncio.sleep(payload["seconds"])
    finally:
        await asyncio.to_thread(_add, -1)
    return now
