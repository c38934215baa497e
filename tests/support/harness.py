"""Starting real bridges for tests: in this process (fast) or as `edgebridge run` subprocesses
(for restarts, SIGKILL and a second instance)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bridge.model.config import parse_config
from bridge.process.runtime import Bridge

REPO = Path(__file__).resolve().parents[2]


def _below_ephemeral() -> tuple[int, int]:
    """Ports under the kernel's ephemeral range: no outgoing connection (a Kafka client's,
    a browser's) ever takes one as its source port between our pick and the bridge's bind."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return max(1024, first - 12000), first - 1


_PICKS = random.Random()  # seeded from the OS: xdist workers pick apart


def free_port() -> int:
    """A loopback TCP port free a moment ago, for a bridge a test starts as a subprocess on a
    fixed port. Port 0 would come from the ephemeral range, where another process's outgoing
    connection can take it before the bridge binds (a flaky 'Address already in use')."""
    low, high = _below_ephemeral()
    for _ in range(200):
        port = _PICKS.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or lingering from an earlier test
            return port
    with socket.socket() as sock:  # a crowded range: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Test pages call from https://bets.example (with credentials) and from anywhere (without).
DEFAULT_CORS = ("https://bets.example", "*")


def config_text(
    routes_toml: str,
    mqtt_port: int = 0,
    http_port: int = 0,
    extra: str = "",
    cors_origins: tuple[str, ...] = DEFAULT_CORS,
    kafka_options: str = "",
) -> str:
    """A routing.toml with loopback listeners on the given ports (0: any free port);
    ``kafka_options`` are extra lines of ``[kafka]`` (TLS, SASL)."""
    return f"""
[bridge]
name = "test"
log_level = "warning"

[kafka]
fetch_max_wait_ms = 10
request_timeout_ms = 5000
{kafka_options}

[listeners.mqtt]
host = "127.0.0.1"
port = {mqtt_port}

[listeners.http]
host = "127.0.0.1"
port = {http_port}
cors_origins = {json.dumps(list(cors_origins))}
# The idempotency ledger's consumer group: a join on the embedded broker takes about half the
# session timeout, and a SIGKILLed instance's keys move after it.
idempotency_session_timeout_ms = 1000
{extra}
{routes_toml}
"""


async def start_bridge(
    routes_toml: str,
    bootstrap: str,
    frontends: list[str] | None = None,
    directory: Path = REPO,
    cors_origins: tuple[str, ...] = DEFAULT_CORS,
    http_options: str = "",
    extra: str = "",
    kafka_options: str = "",
    environ: dict[str, str] | None = None,
    **ports: int,
) -> Bridge:
    """Start a bridge in this event loop. ``directory`` anchors relative schema paths;
    ``http_options`` are extra lines of ``[listeners.http]``, ``extra`` more sections after it."""
    text = config_text(
        routes_toml,
        cors_origins=cors_origins,
        extra=f"{http_options}\n{extra}",
        kafka_options=kafka_options,
        **ports,
    )
    env = {**(environ or {}), "KAFKA_BOOTSTRAP": bootstrap}
    config = parse_config(text, directory / "test-routing.toml", env)
    bridge = Bridge(config, frontends=frontends)
    await bridge.start()
    return bridge


class BridgeProcess:
    """``edgebridge run`` in a subprocess, against ``bootstrap``, on fixed ports."""

    def __init__(
        self, config_file: Path, bootstrap: str, env: dict[str, str] | None = None
    ) -> None:
        self.config_file = config_file
        self.bootstrap = bootstrap
        self.env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_file.with_suffix(f".{time.monotonic_ns()}.log")

    def start(self, wait_port: int | None = None, timeout: float = 30) -> BridgeProcess:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge.process.cli",
                "run",
                "--config",
                str(self.config_file),
                "--log-format",
                "json",
                "--log-level",
                "info",
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait_port is not None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"bridge exited: {self.log_path.read_text()[-3000:]}")
                if b'"bridge.started"' in self.log_path.read_bytes():
                    return self
                time.sleep(0.05)
            self.kill()  # never leave a half-started bridge behind a failed test
            raise TimeoutError(f"bridge did not start: {self.log_path.read_text()[-3000:]}")
        return self

    async def astart(self, wait_port: int | None = None, timeout: float = 30) -> BridgeProcess:
        return await asyncio.to_thread(self.start, wait_port, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")
