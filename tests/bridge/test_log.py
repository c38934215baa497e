"""Log lines a person reads: JSON off a terminal, keys as text (no broker)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

SCRIPT = """
import structlog
from bridge.telemetry import log
log.configure("{format}")
structlog.get_logger("t").warning("demo.key", key=b"test-match-9", raw=b"\\xff\\xfe", n=3)
"""


def run(log_format: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(format=log_format)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr


def test_json_lines_carry_bytes_as_text() -> None:
    [line] = run("json").splitlines()
    record = json.loads(line)
    assert record["event"] == "demo.key"
    assert record["key"] == "test-match-9"
    assert record["raw"] == "\ufffd\ufffd"
    assert record["n"] == 3


def test_pretty_lines_carry_bytes_as_text() -> None:
    text = re.sub(r"\x1b\[[0-9;]*m", "", run("pretty"))  # without the colours
    assert "key=test-match-9" in text
    assert "b'" not in text
