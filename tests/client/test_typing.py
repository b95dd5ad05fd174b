"""The result type of a handle is the handler's return type, for a type checker too."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import krolik_client
import pytest
from mypy import api as mypy_api

SHARED = """
from dataclasses import dataclass
from typing import Any, TypedDict, assert_type

from pydantic import BaseModel

from krolik_client import AsyncClient, AsyncTaskHandle, Client, TaskHandle


class ResizeIn(BaseModel):
    url: str


class ResizeOut(BaseModel):
    url: str
    width: int


@dataclass
class Size:
    width: int
    height: int


class Point(TypedDict):
    x: int
    y: int


async def resize(payload: ResizeIn) -> ResizeOut:
    return ResizeOut(url=payload.url, width=1)


class TaskContext:  # as krolik.registry's, for this snippet
    attempt: int


async def resize_with_context(payload: ResizeIn, context: TaskContext) -> ResizeOut:
    return ResizeOut(url=payload.url, width=context.attempt)


def measure(payload: str) -> Size:
    return Size(1, 2)


def move(payload: Point) -> Point:
    return payload
"""

INFERRED = """
async def inferred(client: AsyncClient, sync: Client, u: str) -> None:
    handle = await client.submit(resize, ResizeIn(url=u), delay=10, queue="q", priority=3)
    assert_type(handle, AsyncTaskHandle[ResizeOut])
    out = await handle.result(timeout=30)
    assert_type(out, ResizeOut)
    with_context = await client.submit(resize_with_context, ResizeIn(url=u))
    assert_type(await with_context.result(), ResizeOut)
    assert_type(await (await client.submit(measure, "3x4")).result(), Size)
    # A TypedDict built by its name: a bare dict literal is typed before the handler is seen.
    assert_type(await (await client.submit(move, Point(x=1, y=2))).result(), Point)
    assert_type(await (await client.submit("resize", {"url": u})).result(), Any)
    many = await client.submit_many(resize, [ResizeIn(url=u)], queue="q")
    assert_type(many, list[AsyncTaskHandle[ResizeOut]])
    assert_type(await client.handle(resize, 7).result(), ResizeOut)
    assert_type(sync.submit(resize, ResizeIn(url=u)), TaskHandle[ResizeOut])
    assert_type(sync.submit(measure, "3x4").result(timeout=5), Size)
"""

REFUSED = """
async def refused(client: AsyncClient, sync: Client) -> None:
    await client.submit(resize, {"url": 1})  # refused: not a ResizeIn
    await client.submit(measure, 3)  # refused: not a str
    await client.submit(resize, ResizeIn(url="u"), delay="soon")  # refused: not seconds
    await client.submit(resize, ResizeIn(url="u"), queeue="q")  # refused: no such option
    sync.submit(move, {"x": 1})  # refused: not a Point
    out: Size = await (await client.submit(resize, ResizeIn(url="u"))).result()  # refused
"""


def _mypy(tmp_path: Path, **modules: str) -> dict[str, list[str]]:
    """mypy (strict) on the given modules; its messages by module."""
    for name, body in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(SHARED + body))
    source = Path(krolik_client.__file__).resolve().parents[1]
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {source}\n")
    out, err, _ = mypy_api.run(
        [
            *(str(tmp_path / f"{name}.py") for name in modules),
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            "--show-error-codes",
        ]
    )
    assert not err, err
    found: dict[str, list[str]] = {name: [] for name in modules}
    for line in out.splitlines():
        for name in modules:
            if line.startswith(str(tmp_path / f"{name}.py")):
                found[name].append(line)
                break
        else:
            if ": error:" in line:
                found.setdefault("elsewhere", []).append(line)
    return found


@pytest.mark.timeout(300)  # a cold mypy run over pydantic and httpx
def test_results_are_typed_from_the_handler_and_wrong_payloads_refused(tmp_path: Path) -> None:
    found = _mypy(tmp_path, inferred=INFERRED, refused=REFUSED)
    assert found["inferred"] == []
    assert found.get("elsewhere", []) == []
    refused_source = (tmp_path / "refused.py").read_text().splitlines()
    expected = {number for number, line in enumerate(refused_source, 1) if "# refused" in line}
    flagged = {
        int(match.group(1))
        for line in found["refused"]
        if ": error:" in line and (match := re.search(r"\.py:(\d+):", line))
    }
    assert flagged == expected, "\n".join(found["refused"])
