#!/usr/bin/env python
"""Read a py-spy ``raw`` profile (collapsed stacks) and print where the time went.

    .venv/bin/python bench/profile_top.py /tmp/prof/drain-postgres-worker.txt
    .venv/bin/python bench/profile_top.py PROFILE --top 30 --json

The benchmarks write such files with ``--profile DIR`` (py-spy record --format raw,
100 samples/s by default, idle time left out). Printed: the share of samples by package of the
innermost frame (self time: sqlalchemy, asyncpg, pydantic, structlog, ...), the
functions with the most self time, and the Krolik functions with the most inclusive
time (the time spent in them and everything they called).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def frame_key(frame: str) -> tuple[str, str]:
    """(function, file) of one frame, without its line number."""
    found = FRAME.match(frame.strip())
    if not found:
        return frame.strip(), "?"
    return found.group("func"), found.group("file")


def package(file: str) -> str:
    if file.startswith("<frozen"):
        return "python (frozen/import)"
    head = file.split("/", 1)[0]
    if head.endswith(".py") or head in {"asyncio", "concurrent", "selectors", "threading"}:
        return "python stdlib" if head not in {"asyncio"} else "asyncio"
    return head


# Innermost frames of a thread that only waits (py-spy counts some of them as busy): idle
# threads of a pool (FastAPI runs sync dependencies in AnyIO's), blocking selects.
IDLE_LEAVES = {
    ("Condition.wait", "threading.py"),
    ("Event.wait", "threading.py"),
    ("Thread.join", "threading.py"),
    ("EpollSelector.select", "selectors.py"),
    ("select", "selectors.py"),
}


def analyse(path: Path, top: int) -> dict[str, Any]:
    self_time: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    by_package: Counter[str] = Counter()
    total = idle = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_key(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        total += count
        leaf = frames[-1]
        self_time[leaf] += count
        by_package[package(leaf[1])] += count
        for key in set(frames):
            inclusive[key] += count

    def share(n: int) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    return {
        "profile": str(path),
        "samples": total,
        "idle_wait_samples_left_out": idle,
        "self_by_package_pct": {name: share(n) for name, n in by_package.most_common()},
        "top_self": [
            {"function": f, "file": file, "pct": share(n)}
            for (f, file), n in self_time.most_common(top)
        ],
        "top_krolik_inclusive": [
            {"function": f, "file": file, "pct": share(n)}
            for (f, file), n in inclusive.most_common()
            if file.startswith("krolik/")
        ][:top],
        "top_inclusive": [
            {"function": f, "file": file, "pct": share(n)}
            for (f, file), n in inclusive.most_common(top * 3)
            if not file.startswith(("<frozen", "asyncio/", "uvloop", "typer/", "click/"))
        ][:top],
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['profile']}: {report['samples']} busy samples"
        f" ({report['idle_wait_samples_left_out']} samples of threads only waiting left out)"
    )
    print("\nself time by package of the innermost frame:")
    for name, pct in report["self_by_package_pct"].items():
        if pct >= 0.5:
            print(f"  {pct:5.1f}%  {name}")
    for title, key in (
        ("functions with the most self time", "top_self"),
        ("Krolik functions, inclusive time", "top_krolik_inclusive"),
        ("library functions, inclusive time", "top_inclusive"),
    ):
        print(f"\n{title}:")
        for row in report[key]:
            print(f"  {row['pct']:5.1f}%  {row['function']}  ({row['file']})")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends it quietly
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON object per profile")
    args = parser.parse_args(argv)
    for path in args.profiles:
        report = analyse(path, args.top)
        if args.json:
            print(json.dumps(report))
        else:
            print_report(report)
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
