"""`edgebridge demo` as a newcomer runs it twice: the second one says why, in one line."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from harness import REPO, free_port

pytestmark = pytest.mark.broker  # the demo starts its own embedded broker


def test_a_second_demo_on_a_taken_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:  # the first demo's page port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "bridge.process.cli", "demo", "--port", str(port)]
        command += ["--mqtt-port", str(free_port()), "--admin-port", str(free_port())]
        command += ["--grpc-port", str(free_port()), "--log-format", "json"]
        result = subprocess.run(
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=90,  # a hang guard, not a timing assertion
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"edgebridge demo: cannot start: cannot listen on 127.0.0.1:{port}: " in result.stderr
