"""`edgebridge run --workers 2` as real processes: two workers serving one port, metrics summed
over workers, a killed worker restarted, SIGTERM draining all, SIGKILL leaving no orphans, and
the embedded broker started once for all workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import REPO, config_text, free_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`

ROUTES = """
[listeners.admin]
host = "127.0.0.1"
port = 0

[[routes]]
name = "scores"
topic = "scores"
key = "{match}"
[routes.sse]
path = "/matches/{match}/scores"
"""


class Supervised:
    """`edgebridge run --workers N` in a subprocess, logging JSON lines to a file."""

    def __init__(self, tmp_path: Path, bootstrap: str, workers: int = 2) -> None:
        self.config = tmp_path / "routing.toml"
        self.config.write_text(config_text(ROUTES, mqtt_port=free_port(), http_port=free_port()))
        self.log_path = tmp_path / "supervisor.log"
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [sys.executable, "-m", "bridge.process.cli", "run", "--config", str(self.config)]
        command += ["--workers", str(workers), "--frontends", "", "--log-format", "json"]
        command += ["--log-level", "info"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def wait_for(self, name: str, count: int, timeout: float = 60) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events(name)
            if len(events) >= count:
                return events
            assert self.proc.poll() is None, f"supervisor exited:\n{self.logs()}"
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} {name} events:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def supervised(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Supervised]:
    process = Supervised(tmp_path, kafka_bootstrap)
    yield process
    if process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait()


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def pids_answering(port: int, want: set[int] | None = None, attempts: int = 400) -> set[int]:
    """Worker pids seen on fresh connections to one port (the kernel spreads them)."""
    seen: set[int] = set()
    for _ in range(attempts):
        with httpx.Client() as client:  # a new connection, so a new 4-tuple hash
            seen.add(client.get(f"http://127.0.0.1:{port}/healthz").json()["pid"])
        if want is not None and want <= seen:
            break
    return seen


def starts_total(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgebridge_bridge_starts_total":
                return sample.value
    raise AssertionError(text)


def test_two_workers_share_one_port_restart_and_drain(supervised: Supervised) -> None:
    started = supervised.wait_for("bridge.started", 2)
    ports = {event["admin_port"] for event in started}
    assert len(ports) == 1, f"workers listen on different ports: {ports}"  # port 0 fixed once
    port = int(ports.pop())  # type: ignore[call-overload]
    workers = {int(e["pid"]) for e in supervised.wait_for("worker.started", 2)}  # type: ignore[call-overload]
    assert pids_answering(port, want=workers) == workers
    assert starts_total(port) == 2  # summed over both workers, whichever answered

    victim = workers.pop()
    os.kill(victim, signal.SIGKILL)
    died = supervised.wait_for("worker.died", 1)
    assert died[0]["pid"] == victim and died[0]["exit_code"] == -signal.SIGKILL
    supervised.wait_for("bridge.started", 3)
    replacement = int(supervised.wait_for("worker.started", 3)[2]["pid"])  # type: ignore[call-overload]
    new_workers = workers | {replacement}
    assert replacement != victim and not alive(victim)
    assert pids_answering(port, want=new_workers) == new_workers
    assert starts_total(port) == 3  # the dead worker's count is kept: totals never go back

    assert supervised.stop(signal.SIGTERM) == 0
    assert wait_gone(list(new_workers))
    assert len(supervised.events("bridge.stopped")) == 2  # each worker drained
    assert supervised.events("supervisor.stopped")


def test_sigkill_of_the_supervisor_takes_the_workers_down(supervised: Supervised) -> None:
    supervised.wait_for("bridge.started", 2)
    workers = [int(e["pid"]) for e in supervised.wait_for("worker.started", 2)]  # type: ignore[call-overload]
    supervised.stop(signal.SIGKILL)
    assert wait_gone(workers), "a worker outlived its supervisor"


def test_embedded_broker_is_started_once_for_all_workers(tmp_path: Path) -> None:
    process = Supervised(tmp_path, bootstrap="")
    try:
        started = process.wait_for("bridge.started", 2)
        port = int(started[0]["admin_port"])  # type: ignore[call-overload]
        workers = {int(e["pid"]) for e in process.wait_for("worker.started", 2)}  # type: ignore[call-overload]
        assert pids_answering(port, want=workers) == workers
        bootstraps = {e["bootstrap"] for e in process.events("kafka.bootstrap")}
        assert len(bootstraps) == 1 and "" not in bootstraps, bootstraps  # both use one broker
        brokers = [line for line in process.logs().splitlines() if "embedded Kafka broker" in line]
        assert len(brokers) == 1, brokers
        with httpx.Client() as client:
            for _ in range(10):
                assert client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        assert process.stop(signal.SIGTERM) == 0
    finally:
        if process.proc.poll() is None:
            process.proc.kill()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_another_program_holds_ends_the_run_with_its_cause(
    tmp_path: Path, kafka_bootstrap: str, workers: int
) -> None:
    """One line naming the address and what to do, exit status 1, no traceback; under
    --workers the supervisor finds it before any worker is started (none restarted forever)."""
    with socket.socket() as taken:  # another program's server: no SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "routing.toml"
        config.write_text(config_text(ROUTES, mqtt_port=free_port(), http_port=port))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bridge.process.cli",
                "run",
                "--config",
                str(config),
                "--workers",
                str(workers),
                "--log-format",
                "json",
            ],
            cwd=REPO,
            env={**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap},
            capture_output=True,
            text=True,
            timeout=60,  # a hang guard, not a timing assertion
        )
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert '"worker.started"' not in output and '"worker.died"' not in output
    assert f"edgebridge: cannot start: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "--listen-port" in result.stderr
    assert sum('"listener.bind_failed"' in line for line in output.splitlines()) == 1, output
