"""Every line on stderr is one JSON object: structlog's, the standard library's, the rest.

Each case runs in a subprocess, so the test process keeps its own logging, hooks and
warning filters.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

EVERYTHING = """
import logging, threading, warnings
from krolik.log import configure_logging, current_request_id, get_logger

configure_logging(json=True, level="INFO")
configure_logging(json=True, level="INFO")  # again: still one handler, one line per record
log = get_logger("krolik.probe")
log.info("structlog_line", n=1)
for name in ("aio_pika", "aiormq", "uvicorn.error"):
    logging.getLogger(name).warning("third party line from %s", name)
logging.getLogger("aio_pika.robust_connection").info("chatty reconnect notice")
logging.getLogger("uvicorn.error").info("Application startup complete.")
current_request_id.set("req-42")
logging.getLogger("aiormq.connection").warning("inside a request")
current_request_id.set(None)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("structlog_failure")
    logging.getLogger("aiormq.connection").exception("stdlib failure")
warnings.warn("mind the gap", UserWarning, stacklevel=1)
thread = threading.Thread(target=lambda: {}["missing"], name="doomed")
thread.start()
thread.join()


class Finalized:
    def __del__(self):
        raise ValueError("raised in a finalizer")


Finalized()
raise RuntimeError("the main thread gives up")
"""


def run_logging(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter with stderr a pipe (not a terminal)."""
    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APP__")}
    full_env.pop("PYTHONWARNINGS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line parsed; a line that is not one JSON object fails the test with all of them."""
    lines = stderr.splitlines()
    assert lines, "nothing was logged"
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n\n{stderr}") from None
        assert isinstance(value, dict), f"line {number} is not an object: {line!r}"
        parsed.append(value)
    return parsed


def by_event(lines: list[dict[str, Any]], event: str) -> dict[str, Any]:
    found = [line for line in lines if line.get("event") == event]
    assert len(found) == 1, f"{event!r} logged {len(found)} times: {lines}"
    return found[0]


def test_every_stderr_line_is_one_json_object() -> None:
    result = run_logging(EVERYTHING)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = json_lines(result.stderr)

    for line in lines:
        assert isinstance(line.get("level"), str), line
        assert str(line.get("timestamp", "")).endswith("Z"), line  # ISO, UTC
        assert line.get("logger"), line

    own = by_event(lines, "structlog_line")
    assert (own["logger"], own["level"], own["n"]) == ("krolik.probe", "info", 1)
    for name in ("aio_pika", "aiormq", "uvicorn.error"):
        line = by_event(lines, f"third party line from {name}")
        assert (line["logger"], line["level"]) == (name, "warning")
    assert by_event(lines, "Application startup complete.")["logger"] == "uvicorn.error"
    assert by_event(lines, "inside a request")["request_id"] == "req-42"


def test_tracebacks_stay_inside_their_object() -> None:
    lines = json_lines(run_logging(EVERYTHING).stderr)

    for event, logger in (("structlog_failure", "krolik.probe"), ("stdlib failure", "aiormq")):
        line = by_event(lines, event)
        assert line["logger"].startswith(logger), line
        assert line["level"] == "error"
        assert line["exception"].startswith("Traceback (most recent call last)"), line
        assert "ZeroDivisionError: division by zero" in line["exception"]

    threaded = next(line for line in lines if "KeyError: 'missing'" in line.get("exception", ""))
    assert threaded["thread"] == "doomed"
    assert threaded["level"] == "error"

    ignored = next(line for line in lines if "ValueError" in line.get("exception", ""))
    assert ignored["event"] == "unraisable_exception"
    assert "Finalized.__del__" in ignored["where"]

    main = next(line for line in lines if "RuntimeError" in line.get("exception", ""))
    assert "the main thread gives up" in main["exception"]
    assert main["level"] == "critical"


def test_warnings_and_chatty_libraries() -> None:
    lines = json_lines(run_logging(EVERYTHING).stderr)

    warned = next(line for line in lines if "mind the gap" in line["event"])
    assert (warned["logger"], warned["level"]) == ("py.warnings", "warning")
    assert "UserWarning" in warned["event"]
    # Below WARNING the AMQP clients are left out; uvicorn's life cycle is kept.
    assert not [line for line in lines if line["event"] == "chatty reconnect notice"]


def test_the_configured_level_filters_every_logger() -> None:
    result = run_logging(
        """
        import logging
        from krolik.log import configure_logging, get_logger

        configure_logging(json=True, level="ERROR")
        get_logger("krolik.probe").warning("dropped_structlog_warning")
        logging.getLogger("aiormq").warning("dropped stdlib warning")
        logging.getLogger("uvicorn.error").info("dropped uvicorn info")
        get_logger("krolik.probe").error("kept_structlog_error")
        logging.getLogger("aiormq").error("kept stdlib error")
        """
    )
    assert result.returncode == 0, result.stderr
    events = [line["event"] for line in json_lines(result.stderr)]
    assert events == ["kept_structlog_error", "kept stdlib error"]


def test_debug_shows_krolik_and_uvicorn_not_the_amqp_frames() -> None:
    result = run_logging(
        """
        import logging
        from krolik.log import configure_logging, get_logger

        configure_logging(json=True, level="DEBUG")
        get_logger("krolik.probe").debug("own_debug")
        logging.getLogger("uvicorn.error").debug("uvicorn debug")
        logging.getLogger("aiormq.connection").debug("frame received")
        logging.getLogger("sqlalchemy.engine.Engine").info("SELECT 1")
        """
    )
    events = [line["event"] for line in json_lines(result.stderr)]
    assert events == ["own_debug", "uvicorn debug"]


def test_a_terminal_gets_readable_lines() -> None:
    result = run_logging(
        """
        import logging
        from krolik.log import configure_logging, get_logger

        configure_logging(json=False, level="INFO")
        get_logger("krolik.probe").info("own_line", n=1)
        logging.getLogger("aiormq").warning("third party line")
        """
    )
    assert result.returncode == 0, result.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # colours off, for the asserts
    own, foreign = plain.splitlines()
    assert "own_line" in own
    assert "n=1" in own
    assert "third party line" in foreign
    assert "aiormq" in foreign
    assert not foreign.startswith("{")
