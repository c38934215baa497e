"""`edgebridge run` as a real process: embedded broker, graceful SIGTERM, no orphan on SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from harness import BridgeProcess, config_text, free_port

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`

ROUTES = """
[[routes]]
name = "scores"
topic = "scores"
key = "{match}"
[routes.sse]
path = "/matches/{match}/scores"
"""


def broker_pid(process: BridgeProcess) -> int:
    for line in process.logs().splitlines():
        if line.startswith("{") and "embedded Kafka broker" in line:
            return int(json.loads(line)["pid"])
    raise AssertionError(f"no embedded broker in the log:\n{process.logs()}")


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def wait_gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def start_embedded(tmp_path: Path) -> BridgeProcess:
    config = tmp_path / "routing.toml"
    config.write_text(config_text(ROUTES, mqtt_port=free_port(), http_port=free_port()))
    return BridgeProcess(config, bootstrap="").start(wait_port=1)


def test_sigterm_drains_and_stops_the_embedded_broker(tmp_path: Path) -> None:
    process = start_embedded(tmp_path)
    pid = broker_pid(process)
    assert alive(pid)
    assert process.stop(signal.SIGTERM) == 0
    assert wait_gone(pid)
    logs = process.logs()
    assert "MEMORY-ONLY" in logs
    assert logs.index('"bridge.stopping"') < logs.index('"bridge.stopped"')


def test_sigkill_leaves_no_broker_behind(tmp_path: Path) -> None:
    process = start_embedded(tmp_path)
    pid = broker_pid(process)
    assert process.proc is not None
    os.kill(process.proc.pid, signal.SIGKILL)
    process.proc.wait()
    assert wait_gone(pid), "the embedded broker outlived its bridge"
    # Nor any worker: they get SIGTERM when the supervisor dies, and a drain that cannot reach
    # the (now dead) broker is cut short rather than hanging for ever.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and processes_running(process.config_file):
        time.sleep(0.2)
    assert not processes_running(process.config_file), "a bridge worker outlived its supervisor"


def processes_running(config_file: Path) -> list[int]:
    """Live processes whose command line names ``config_file``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(config_file).encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found
