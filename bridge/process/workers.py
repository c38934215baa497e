"""``edgebridge run --workers N``: N independent bridge processes sharing the listening ports.

Like Zilla's one engine worker per core, each worker is a whole bridge (its own producer, hub
and connections) and the kernel spreads new connections over them (``SO_REUSEPORT``). Kafka is
the only shared state, so any worker can serve any client, as any instance can.

The supervisor (this module, in the parent process):

* starts the embedded broker once, if one is configured, and hands its address to the workers
  in ``KAFKA_BOOTSTRAP`` (N embedded brokers would be N separate, empty clusters);
* fixes listener ports configured as 0 before the workers start (each worker binding port 0
  would get a different port), holding a bound, *non-listening* socket on each so no other
  program takes it while the kernel never routes a connection to it;
* gives the workers one ``PROMETHEUS_MULTIPROC_DIR`` so any worker's ``/metrics`` adds up all;
* restarts a worker that dies (backing off when one keeps dying at start-up);
* on SIGTERM/SIGINT sends SIGTERM to every worker, waits for them to drain, then stops the
  broker. Workers die with the supervisor even on SIGKILL (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from bridge.kafka.client_settings import check_connection
from bridge.kafka.embedded_broker import EmbeddedBroker
from bridge.model.config import Config, ListenerSettings
from bridge.telemetry.metrics import MULTIPROC_ENV, worker_exited
from bridge.web.sockets import check_free

log = structlog.get_logger(__name__)

WORKER_ENV = "EDGEBRIDGE_WORKER"  # the worker's index, also shown by /healthz
SUPERVISOR_ENV = "EDGEBRIDGE_SUPERVISOR_PID"
LISTENERS = ("mqtt", "http", "admin", "grpc")
DRAIN_TIMEOUT_S = 30.0
QUICK_DEATH_S = 5.0  # a worker dying sooner than this after start is crash-looping
MAX_BACKOFF_S = 30.0


def default_workers() -> int:
    return int(os.environ.get("EDGEBRIDGE_WORKERS") or os.cpu_count() or 1)


# -- listener overrides (shared by the supervisor and ``run --host``) ----------------------------


def listener_of(config: Config, name: str) -> ListenerSettings | None:
    listener: ListenerSettings | None = getattr(config, f"{name}_listener")
    return listener


def with_listeners(
    config: Config, host: str | None = None, ports: dict[str, int] | None = None
) -> Config:
    """``config`` with every listener's host replaced and some ports fixed."""
    changes: dict[str, ListenerSettings] = {}
    for name in LISTENERS:
        listener = listener_of(config, name)
        if listener is None:
            continue
        if host is not None:
            listener = replace(listener, host=host)
        if ports and name in ports:
            listener = replace(listener, port=ports[name])
        changes[f"{name}_listener"] = listener
    return replace(config, **changes)  # type: ignore[arg-type]


def parse_ports(values: Sequence[str]) -> dict[str, int]:
    """``["http=8080", "mqtt=1883"]`` -> ``{"http": 8080, "mqtt": 1883}``."""
    ports: dict[str, int] = {}
    for value in values:
        name, _, port = value.partition("=")
        if name not in LISTENERS or not port.isdigit():
            raise ValueError(
                f"--listen-port {value!r}: expected one of {', '.join(LISTENERS)}=PORT"
            )
        ports[name] = int(port)
    return ports


def reserve_port(host: str) -> tuple[socket.socket, int]:
    """A bound, not listening, SO_REUSEPORT socket: the port is ours, connections go elsewhere."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock, int(sock.getsockname()[1])


# -- the worker side -------------------------------------------------------------------------


def die_with_supervisor() -> None:
    """In a worker: get SIGTERM when the supervisor dies (even by SIGKILL), and drain."""
    parent = os.environ.get(SUPERVISOR_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# -- the supervisor --------------------------------------------------------------------------


@dataclass(slots=True)
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.5


@dataclass
class Supervisor:
    config: Config
    workers: int
    worker_args: list[str] = field(default_factory=list)  # passed through (log format, frontends)
    host: str | None = None
    _workers: list[Worker] = field(default_factory=list)
    _draining: bool = False
    _reserved: list[socket.socket] = field(default_factory=list)
    _metrics_dir: Path | None = None
    _own_metrics_dir: bool = False
    _broker: EmbeddedBroker | None = None

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            env = await self._prepare()
            self._workers = [Worker(i) for i in range(self.workers)]
            watchers = [asyncio.create_task(self._keep_alive(w, env, stop)) for w in self._workers]
            log.info("supervisor.started", workers=self.workers, pid=os.getpid())
            await stop.wait()
            self._draining = True
            log.info("supervisor.draining", workers=self.workers)
            await self._drain()
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            await self._cleanup()
        log.info("supervisor.stopped")
        return 0

    async def _prepare(self) -> dict[str, str]:
        env = dict(os.environ)
        env[SUPERVISOR_ENV] = str(os.getpid())
        if self.config.kafka.embedded:
            self._broker = EmbeddedBroker()
            await self._broker.start()
            env["KAFKA_BOOTSTRAP"] = self._broker.bootstrap
        else:
            # Once here, before any worker: a wrong password or an untrusted certificate ends
            # the supervisor with its cause (KafkaConnectError), instead of workers that die
            # and are restarted forever.
            await check_connection(self.config.kafka, self.config.kafka.bootstrap)
        self._metrics_dir, self._own_metrics_dir = _metrics_dir(env.get(MULTIPROC_ENV))
        env[MULTIPROC_ENV] = str(self._metrics_dir)
        ports = []
        for name in LISTENERS:
            listener = listener_of(self.config, name)
            if listener is None:
                continue
            port = listener.port
            if port == 0:
                sock, port = reserve_port(self.host or listener.host)
                self._reserved.append(sock)
            else:
                # Once here, before any worker: a taken port ends the supervisor with its cause,
                # instead of workers restarted forever against a port they never get.
                check_free(self.host or listener.host, port)
            ports += ["--listen-port", f"{name}={port}"]
        self.worker_args = [*self.worker_args, *ports]
        return env

    def _command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "bridge.process.cli",
            "run",
            "--config",
            str(self.config.path),
        ]
        command += ["--workers", "1", *self.worker_args]
        if self.host is not None:
            command += ["--host", self.host]
        return command

    async def _keep_alive(self, worker: Worker, env: dict[str, str], stop: asyncio.Event) -> None:
        while not (self._draining or stop.is_set()):
            worker.process = await asyncio.create_subprocess_exec(
                *self._command(), env={**env, WORKER_ENV: str(worker.index)}
            )
            worker.started_at = time.monotonic()
            log.info(
                "worker.started",
                worker=worker.index,
                pid=worker.process.pid,
                restarts=worker.restarts,
            )
            code = await worker.process.wait()
            worker_exited(worker.process.pid, env[MULTIPROC_ENV])
            if self._draining or stop.is_set():
                return
            lived = time.monotonic() - worker.started_at
            worker.backoff_s = (
                min(worker.backoff_s * 2, MAX_BACKOFF_S) if lived < QUICK_DEATH_S else 0.5
            )
            worker.restarts += 1
            log.warning(
                "worker.died",
                worker=worker.index,
                pid=worker.process.pid,
                exit_code=code,
                restart_in_s=worker.backoff_s,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), worker.backoff_s)

    async def _drain(self) -> None:
        running = [w.process for w in self._workers if w.process and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in running]
        if not waits:
            return
        _done, pending = await asyncio.wait(waits, timeout=DRAIN_TIMEOUT_S)
        for process in running:
            if process.returncode is None:
                log.warning("worker.drain_timeout", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending)

    async def _cleanup(self) -> None:
        for sock in self._reserved:
            sock.close()
        if self._broker is not None:
            await self._broker.stop()
        if self._own_metrics_dir and self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _metrics_dir(configured: str | None) -> tuple[Path, bool]:
    """The multiprocess metrics directory, emptied (stale files from an earlier run would be
    added to this run's totals). Returns it and whether we created it."""
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    return Path(tempfile.mkdtemp(prefix="edgebridge-metrics-")), True
