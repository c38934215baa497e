"""SSE fan-out benchmark: the bridge against a minimal raw-asyncio fan-out server, same run.

Every process is separate: the embedded broker (Tansu), the bridge (``edgebridge run``, one
worker unless ``--workers``), the raw baseline server, and two load-generator processes holding
the client connections (the same generator for every server: 1 in 25 streams are probes that
read at once and time every event, the rest read in bulk every 0.5 s). Every server is
started and connected first, then measured:

1. idle memory: RSS growth per connected, idle stream;
2. fixed rate: ``--rate`` events/s to every client, publish->receive latency p50/p99 and server
   CPU; with ``--rounds N`` the phase is split into N rounds that take turns between the
   servers (raw, bridge, raw, bridge...), so on a shared machine both see the same load;
3. saturation: ``--saturate-rate`` events/s, the event-writes/s the clients actually receive.

Prints one ``name: value`` figure per line, then the bridge/raw ratios, for the bridge on the HTTP
listener, our server (``edge``) and Hypercorn (``--listener``). Example::

    .venv/bin/python bench/sse_fanout.py --clients 5000 --rate 2 --seconds 12 --rounds 4

``--tls`` serves the bridge's streams over TLS (self-signed; the raw baseline stays plain TCP).

``--filters N`` measures subscriber filters instead (issue 16): one bridge, two routes, the same
clients twice: unfiltered (every client gets every event, ``--rate`` events/s) and filtered (client
``i`` asks for ``?f=i % N``, events carry header ``f`` round robin at ``--rate`` x N events/s,
one per group per tick (``--spread``: evenly over each second), so each client still gets
``--rate`` events/s). Prints p50/p99 and server CPU per delivered event of
both and their ratio; no raw baseline, no saturation phase::

    .venv/bin/python bench/sse_fanout.py --filters 100 --clients 5000 --rate 2 --seconds 12 --rounds 4

The raw baseline writes each event to each socket with ``transport.write`` (no HTTP framework,
no Kafka): what a hand-written asyncio server costs per delivery on this machine right now.
Its events come from the driver over a local TCP socket; the bridge's come through Kafka, so the
bridge's latency includes a produce and a fetch (``fetch_max_wait_ms`` = 10). The raw server
also stamps each probe's copy with the time it wrote it to that socket, which splits its
latency into the server's part (the pass over every client) and the load generator's part
(socket write -> probe read), printed as "the load generator's share".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
TIMESTAMP = re.compile(rb"data: (\d{19})")
# The raw server also stamps a probe's event with the moment it wrote it to that probe's socket.
WRITE_STAMP = re.compile(rb"data: \d{19} (\d{19})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the raw baseline server ---------------------------------------------------------------------

RAW_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"Connection: close\r\n\r\nretry: 2000\n\n"
)


class RawStream(asyncio.Protocol):
    def __init__(self, clients: set[asyncio.Transport], probes: set[asyncio.Transport]) -> None:
        self.clients = clients
        self.probes = probes
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            probe = PROBE_HEADER in self.head.lower()
            self.head = None  # type: ignore[assignment]
            assert self.transport is not None
            self.transport.write(RAW_HEAD)
            self.clients.add(self.transport)
            if probe:
                self.probes.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.clients.discard(self.transport)  # type: ignore[arg-type]
        self.probes.discard(self.transport)  # type: ignore[arg-type]


class RawPublisher(asyncio.Protocol):
    """Lines of timestamps from the driver; each becomes one event written to every client.

    A probe's copy also carries the time it was written to that probe's socket, so the load
    generator's own share of the latency (socket write -> probe read) is measured apart from
    the server's (publish -> socket write, most of it the pass over every client)."""

    def __init__(self, clients: set[asyncio.Transport], probes: set[asyncio.Transport]) -> None:
        self.clients = clients
        self.probes = probes
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        probes = self.probes
        for line in lines:
            event = b"data: " + line + b"\n\n"
            for transport in self.clients:
                if transport in probes:
                    transport.write(b"data: %b %d\n\n" % (line, time.time_ns()))
                else:
                    transport.write(event)


async def raw_server(port: int, control_port: int) -> None:
    loop = asyncio.get_running_loop()
    clients: set[asyncio.Transport] = set()
    probes: set[asyncio.Transport] = set()
    await loop.create_server(lambda: RawStream(clients, probes), "127.0.0.1", port, backlog=4096)
    await loop.create_server(lambda: RawPublisher(clients, probes), "127.0.0.1", control_port)
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the load generator --------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One stream. A *probe* reads at once and timestamps every event; the others read in bulk
    once per ``LAZY_READ_S`` (the kernel holds their bytes meanwhile), so the load generator's
    own CPU does not become the latency being measured: the server still writes every event to
    every socket, only the generator reads most of them later and in one go."""

    __slots__ = ("events", "gen", "open", "probe", "served", "tail", "transport")

    def __init__(self, gen: Generator, probe: bool) -> None:
        self.gen = gen
        self.probe = probe
        self.events = 0
        self.open = False
        self.served = False  # the server answered 200: its stream is open
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.open = True
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.served:  # an error page (no SSE front-end?) is not a stream
            self.served = data.startswith(b"HTTP/1.1 200 ")
        # The last 5 bytes are kept so a marker split across reads is counted once.
        chunk = self.tail + data
        self.tail = chunk[-5:]
        found = chunk.count(b"data: ")
        self.events += found
        if not self.probe:
            assert self.transport is not None
            self.transport.pause_reading()
        elif self.gen.sample_latency and found:
            now = time.time_ns()
            for stamp in TIMESTAMP.findall(data):
                self.gen.latencies.append((now - int(stamp)) / 1e6)
            for stamp in WRITE_STAMP.findall(data):
                self.gen.reads.append((now - int(stamp)) / 1e6)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False


LAZY_READ_S = 0.5
PROBE_EVERY = 25  # one probe per 25 streams: 200 of 5,000, in a process of their own
PROBE_HEADER = b"x-bench-probe: 1"  # (the bridge ignores it; the raw server stamps writes)


class Generator:
    def __init__(self, probes: bool) -> None:
        self.probes = probes
        self.clients: list[Client] = []
        self.latencies: list[float] = []
        self.reads: list[float] = []  # raw server only: its socket write -> the probe's read
        self.sample_latency = False
        self.cpu_started = 0.0
        self.wall_started = 0.0

    async def connect(self, host: str, port: int, path: str, count: int, tls: bool = False) -> None:
        """``path`` may contain ``{i}``, replaced per stream by ``index % modulus`` (given as
        ``{i}`` after a ``%`` sign: ``/f?f={i}%100``). ``tls``: every stream over TLS (the
        bench's self-signed certificate is not verified)."""
        loop = asyncio.get_running_loop()
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        modulus = 0
        if "%" in path:
            path, _, mod = path.rpartition("%")
            modulus = int(mod)
        probe = PROBE_HEADER + b"\r\n" if self.probes else b""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n".encode()
            + probe
            + b"\r\n"
        )

        def variant(index: int) -> bytes:
            return str(index % modulus if modulus else index).encode()

        async def one(index: int) -> None:
            # A path with "{i}" gives each stream its own variant (the filtered fan-out).
            wanted = request.replace(b"{i}", variant(index)) if b"{i}" in request else request
            for attempt in range(20):
                try:
                    transport, client = await loop.create_connection(
                        lambda: Client(self, self.probes), host, port, ssl=context
                    )
                except OSError:
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                transport.write(wanted)
                self.clients.append(client)
                return

        for start in range(0, count, 250):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 250, count))))
        # Idle memory and CPU are measured once every stream is open, not while heads queue.
        for _ in range(600):  # a poll: 5,000 clients need no event each
            if all(c.served for c in self.clients):
                break
            await asyncio.sleep(0.1)

    async def read_lazily(self) -> None:
        while True:
            await asyncio.sleep(LAZY_READ_S)
            for client in self.clients:
                if not client.probe and client.open and client.transport is not None:
                    client.transport.resume_reading()

    def total(self) -> int:
        return sum(c.events for c in self.clients)


async def generator(host: str, port: int, path: str, probes: bool, tls: bool = False) -> None:
    """Commands on stdin, one JSON answer per line on stdout."""
    gen = Generator(probes)
    loop = asyncio.get_running_loop()
    lazy = asyncio.create_task(gen.read_lazily())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["do"] == "connect":
            await gen.connect(host, port, path, command["count"], tls)
            answer = {"connected": sum(c.open and c.served for c in gen.clients)}
        elif command["do"] == "start":
            gen.cpu_started = sum(os.times()[:2])
            gen.wall_started = time.monotonic()
            gen.latencies = []
            gen.reads = []
            gen.sample_latency = command["latency"]
            answer = {"events": gen.total()}
        elif command["do"] == "stop":
            gen.sample_latency = False
            answer = {
                "events": gen.total(),
                "latencies": sorted(gen.latencies),
                "reads": sorted(gen.reads),
                "open": sum(c.open for c in gen.clients),
                "cpu": (sum(os.times()[:2]) - gen.cpu_started)
                / (time.monotonic() - gen.wall_started),
            }
        else:
            break
        print(json.dumps(answer), flush=True)
    lazy.cancel()


# -- the driver ----------------------------------------------------------------------------------


class Remote:
    """A child process spoken to with JSON lines."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )

    async def ask(self, **command: object) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return json.loads(await asyncio.to_thread(self.proc.stdout.readline))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)


class Tree:
    """A process and its children (a supervisor's workers), summed."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def _all(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self._all())

    def cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self._all())


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))]


async def measure(server: Server, rate: float, seconds: float, latency: bool) -> dict:
    """One phase at ``rate`` events/s to every client of ``server``: sums, not yet figures."""
    assert server.load is not None
    before = await server.load.ask(do="start", latency=latency)
    cpu_before = server.tree.cpu()
    started = time.monotonic()
    interval = 1 / rate
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed / interval) + 1
        while sent < due:
            await server.publish(str(time.time_ns()).encode())
            sent += 1
        await asyncio.sleep(max(0.0, (sent * interval) - (time.monotonic() - started)))
    await asyncio.sleep(1.0 + 2 * LAZY_READ_S)  # let the last events arrive and be read
    wall = time.monotonic() - started
    cpu_after = server.tree.cpu()
    after = await server.load.ask(do="stop")
    return {
        "published": sent,
        "events": after["events"] - before["events"],
        "seconds": seconds,
        "wall": wall,
        "cpu_s": cpu_after - cpu_before,
        "client_cpu_s": after["cpu"] * wall,
        "latencies": after.get("latencies", []),
        "reads": after.get("reads", []),
        "open": after["open"],
    }


def figures(runs: list[dict]) -> dict:
    """The figures of one or more phases of the same kind (interleaved rounds), pooled."""
    events = sum(r["events"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    wall = sum(r["wall"] for r in runs)
    cpu_s = sum(r["cpu_s"] for r in runs)
    latencies = sorted(x for r in runs for x in r["latencies"])
    reads = sorted(x for r in runs for x in r["reads"])
    return {
        "published": sum(r["published"] for r in runs),
        "events": events,
        "writes_per_s": events / seconds,
        "cpu_per_write_us": cpu_s / max(1, events) * 1e6,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "read_p50_ms": percentile(reads, 0.50),
        "read_p99_ms": percentile(reads, 0.99),
        "cpu": cpu_s / wall,
        "cpu_s": cpu_s,
        "wall": wall,
        "open": runs[-1]["open"],
        "client_cpu": sum(r["client_cpu_s"] for r in runs) / wall,
    }


class Load:
    """Two load-generator processes: the probes (eager, timed) and the bulk (lazy readers), so
    the bulk's periodic reading never delays a probe."""

    def __init__(self, port: int, path: str, tls: bool = False) -> None:
        args = [str(Path(__file__)), "--role", "clients", "--port", str(port), "--path", path]
        args += ["--tls"] if tls else []
        self.probes = Remote([*args, "--probes"])
        self.bulk = Remote(args)

    async def ask(self, **command: object) -> dict:
        if command["do"] == "connect":
            count = int(command["count"])  # type: ignore[call-overload]
            probes = max(1, count // PROBE_EVERY)
            a = await self.probes.ask(do="connect", count=probes)
            b = await self.bulk.ask(do="connect", count=count - probes)
            return {"connected": a["connected"] + b["connected"]}
        a, b = await asyncio.gather(self.probes.ask(**command), self.bulk.ask(**command))
        merged = {key: a[key] + b[key] for key in a if key not in ("latencies", "reads")}
        if "latencies" in a:
            merged["latencies"] = a["latencies"]
            merged["reads"] = a["reads"]
        return merged

    def stop(self) -> None:
        self.probes.stop()
        self.bulk.stop()


@dataclass
class Server:
    """One server under test (the raw baseline or a bridge) and the clients connected to it."""

    name: str
    tree: Tree
    port: int
    path: str
    publish: Callable[[bytes], Awaitable[None]]
    load: Load | None = None
    hop: KafkaHop | None = None
    tls: bool = False
    result: dict = field(default_factory=dict)
    fixed_runs: list[dict] = field(default_factory=list)


async def connect(server: Server, args, stack: contextlib.AsyncExitStack) -> None:
    """Connect ``args.clients`` streams and measure the server idle with all of them open."""
    server.load = Load(server.port, server.path, server.tls)
    stack.callback(server.load.stop)
    await asyncio.sleep(1.0)
    rss_before = server.tree.rss()
    connected = (await server.load.ask(do="connect", count=args.clients))["connected"]
    await asyncio.sleep(2.0)  # every stream subscribed and idle
    rss_idle = server.tree.rss()
    cpu_before, idle_started = server.tree.cpu(), time.monotonic()
    await asyncio.sleep(3.0)
    server.result.update(
        connected=connected,
        rss_per_idle_connection_kib=(rss_idle - rss_before) / max(1, connected) / 1024,
        idle_cpu=(server.tree.cpu() - cpu_before) / (time.monotonic() - idle_started),
    )


BRIDGE_CONFIG = """
[bridge]
name = "bench"
log_level = "warning"

[kafka]
fetch_max_wait_ms = 10

[kafka.topics.{topic}]
partitions = 1

[listeners.mqtt]
enabled = false

[listeners.http]
host = "127.0.0.1"
port = {port}
{sse_listener}
[[routes]]
name = "bench"
topic = "{topic}"

[routes.sse]
path = "/bench"
max_buffer_bytes = {buffer}
"""


async def start_bridge(
    args, bootstrap: str, listener: str, stack: contextlib.AsyncExitStack
) -> Server:
    """A bridge with its streams on ``listener``: "edge" (the HTTP listener's own server, the
    default) or "hypercorn" (the same listener with ``http2 = true``); the process and everything else are the same. Each bridge reads a
    topic of its own, so bridges connected at the same time never fan out each other's events."""
    from aiokafka import AIOKafkaProducer

    topic = f"bench-{listener}"
    port = free_port()
    stream_port = port
    # "edge": the listener's own HTTP/1.1 server (default); "hypercorn": the same with http2.
    sse_listener = "http2 = true\n" if listener == "hypercorn" else ""
    directory = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    if args.tls:  # TLS on the same port, a self-signed certificate (ECDSA P-256)
        sys.path.insert(0, str(REPO))  # the tests' certificate maker, not a second one
        from tests.support.tls_certs import self_signed

        cert, key = self_signed(directory)
        sse_listener += f'tls_cert = "{cert}"\ntls_key = "{key}"\n'

    config = directory / "routing.toml"
    config.write_text(
        BRIDGE_CONFIG.format(
            topic=topic,
            port=port,
            buffer=args.buffer,
            sse_listener=sse_listener,
        )
    )
    log = (directory / "bridge.log").open("wb")
    # One bridge process by default: per-event cost is compared against one raw process.
    # --workers N measures `edgebridge run --workers N` (its default is one per core) instead.
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "EDGEBRIDGE_WORKERS": str(args.workers)}
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the child runs on its own
        [
            sys.executable,
            "-m",
            "bridge.process.cli",
            "run",
            "--config",
            str(config),
            "--log-format",
            "json",
            "--frontends",
            "sse",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        proc.kill()

    stack.callback(stop)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    stack.push_async_callback(producer.stop)
    await wait_listening(stream_port, proc)
    await producer.start()

    async def publish(value: bytes) -> None:
        await producer.send(topic, value)

    hop = KafkaHop(bootstrap, topic)
    stack.push_async_callback(hop.stop)
    await hop.start()
    name = f"bridge-{listener}" + (f"-{args.workers}-workers" if args.workers > 1 else "")
    name += "-tls" if args.tls else ""
    return Server(name, Tree(proc.pid), stream_port, "/bench", publish, hop=hop, tls=args.tls)


class KafkaHop:
    """A plain aiokafka consumer of the bench topic in the driver: the produce -> fetch part of
    the bridge's latency (Tansu holds a fetch for fetch_max_wait_ms), measured in the same run."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=10, auto_offset_reset="latest"
        )
        self.latencies: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=1000)
            now = time.time_ns()
            for records in batches.values():
                for record in records:
                    if record.value and record.value.isdigit():
                        self.latencies.append((now - int(record.value)) / 1e6)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()

    def summary(self) -> dict:
        ordered = sorted(self.latencies)
        return {"p50_ms": percentile(ordered, 0.5), "p99_ms": percentile(ordered, 0.99)}


async def start_raw(stack: contextlib.AsyncExitStack) -> Server:
    port, control = free_port(), free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the child runs on its own
        [
            sys.executable,
            str(Path(__file__)),
            "--role",
            "raw-server",
            "--port",
            str(port),
            "--control-port",
            str(control),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def stop() -> None:
        proc.kill()
        proc.wait(5)

    stack.callback(stop)
    assert proc.stdout is not None
    await asyncio.to_thread(proc.stdout.readline)
    _, writer = await asyncio.open_connection("127.0.0.1", control)

    async def publish(value: bytes) -> None:
        writer.write(value + b"\n")
        await writer.drain()

    return Server("raw", Tree(proc.pid), port, "/", publish)


async def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("bridge exited")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("bridge did not listen")


def cpu_per_write(phase: dict) -> float:
    return float(phase["cpu_per_write_us"])


def report(name: str, result: dict) -> None:
    fixed, saturated = result["fixed"], result["saturated"]
    print(f"{name} connected clients: {result['connected']}")
    print(f"{name} RSS per idle connection KiB: {result['rss_per_idle_connection_kib']:.2f}")
    print(f"{name} idle server CPU with all streams open (cores): {result['idle_cpu']:.3f}")
    print(f"{name} fixed-rate event-writes/s: {fixed['writes_per_s']:.0f}")
    print(f"{name} fixed-rate latency p50 ms: {fixed['p50_ms']:.1f}")
    print(f"{name} fixed-rate latency p99 ms: {fixed['p99_ms']:.1f}")
    if fixed["read_p50_ms"] == fixed["read_p50_ms"]:  # (nan: the server does not stamp writes)
        print(
            f"{name} fixed-rate socket write->probe read p50/p99 ms (the load generator's "
            f"share): {fixed['read_p50_ms']:.1f} / {fixed['read_p99_ms']:.1f}"
        )
    print(f"{name} fixed-rate events published: {fixed['published']}")
    print(f"{name} fixed-rate server CPU (cores): {fixed['cpu']:.2f}")
    print(f"{name} fixed-rate server CPU per event-write us: {cpu_per_write(fixed):.1f}")
    idle_s = result["idle_cpu"] * fixed["wall"]  # what the server burns with nothing to send
    net = (fixed["cpu_s"] - idle_s) / max(1, fixed["events"]) * 1e6
    print(f"{name} fixed-rate server CPU per event-write above idle us: {net:.1f}")
    print(f"{name} fixed-rate load-generator CPU (cores): {fixed['client_cpu']:.2f}")
    print(f"{name} saturation event-writes/s: {saturated['writes_per_s']:.0f}")
    print(f"{name} saturation events published: {saturated['published']}")
    print(f"{name} saturation server CPU (cores): {saturated['cpu']:.2f}")
    print(f"{name} saturation server CPU per event-write us: {cpu_per_write(saturated):.1f}")
    print(f"{name} saturation load-generator CPU (cores): {saturated['client_cpu']:.2f}")
    print(f"{name} streams still open after saturation: {saturated['open']}")


async def drive(args) -> None:
    from bridge.kafka.embedded_broker import EmbeddedBroker

    print(f"load average 1/5/15 min at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"clients: {args.clients}")
    print(f"fixed rate events/s per client: {args.rate}")
    print(f"fixed-rate rounds per server, interleaved: {args.rounds}")
    print(f"saturation publish rate events/s: {args.saturate_rate}")
    listeners = ["edge", "hypercorn"] if args.listener == "both" else [args.listener]
    async with contextlib.AsyncExitStack() as stack:
        servers = [await start_raw(stack)]
        if args.only != "raw":
            broker = stack.enter_context(EmbeddedBroker())
            for listener in listeners:
                servers.append(await start_bridge(args, broker.bootstrap, listener, stack))
        for server in servers:
            await connect(server, args, stack)
        # The fixed-rate phase in rounds that take turns between the servers, so the raw
        # baseline and the bridge see the same machine: on a shared machine, load changes
        # within a minute by more than the difference being measured.
        for _ in range(args.rounds):
            for server in servers:
                run = await measure(server, args.rate, args.seconds / args.rounds, latency=True)
                server.fixed_runs.append(run)
        # Saturation: the raw baseline last. It cannot keep up (one write per event per client),
        # so it goes on writing its backlog long after its phase ends, and with every server
        # still running that CPU would be taken from whichever server was measured next.
        for server in [*servers[1:], servers[0]]:
            server.result["fixed"] = figures(server.fixed_runs)
            saturated = await measure(server, args.saturate_rate, args.seconds, latency=False)
            server.result["saturated"] = figures([saturated])
        raw = servers[0].result
        for server in servers:
            report(server.name, server.result)
            if server.hop is not None:
                hop = server.hop.summary()
                print(
                    f"{server.name} kafka produce->consume latency p50 ms (plain aiokafka "
                    f"consumer): {hop['p50_ms']:.1f}"
                )
                print(
                    f"{server.name} kafka produce->consume latency p99 ms (plain aiokafka "
                    f"consumer): {hop['p99_ms']:.1f}"
                )
                compare(server.name, server.result, raw)
    print(f"load average 1/5/15 min at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


FILTER_CONFIG = """
[bridge]
name = "bench-filters"
log_level = "warning"

[kafka]
fetch_max_wait_ms = 10

[kafka.topics.{topic}-all]
partitions = 1

[kafka.topics.{topic}-filtered]
partitions = 1

[listeners.mqtt]
enabled = false

[listeners.http]
host = "127.0.0.1"
port = {port}
{sse_listener}
[[routes]]
name = "all"
topic = "{topic}-all"
[routes.sse]
path = "/all"
max_buffer_bytes = {buffer}

[[routes]]
name = "filtered"
topic = "{topic}-filtered"
[[routes.filters]]
name = "f"
source = "header:f"
[routes.sse]
path = "/filtered"
max_buffer_bytes = {buffer}
"""


RUN_BRIDGE = (sys.executable, "-m", "bridge.process.cli", "run", "--config")


async def drive_filters(args) -> None:
    """Unfiltered against filtered fan-out on one bridge, interleaved rounds (module doc)."""
    from aiokafka import AIOKafkaProducer

    from bridge.kafka.embedded_broker import EmbeddedBroker

    groups = args.filters
    listener = "edge" if args.listener == "both" else args.listener
    print(f"load average 1/5/15 min at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"clients: {args.clients}")
    print(f"distinct filters: {groups}")
    print(f"events/s per client: {args.rate}")
    print(f"bridge SSE listener: {listener}")
    print(f"filtered records published: {'evenly' if args.spread else 'one per group per tick'}")
    async with contextlib.AsyncExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        topic = "bench-filters"
        port = free_port()
        stream_port = port
        directory = Path(tempfile.mkdtemp(prefix="sse-filter-bench-"))
        config = directory / "routing.toml"
        sse_listener = "http2 = true\n" if listener == "hypercorn" else ""
        config.write_text(
            FILTER_CONFIG.format(
                topic=topic,
                port=port,
                buffer=args.buffer,
                sse_listener=sse_listener,
            )
        )
        log = (directory / "bridge.log").open("wb")
        env = {**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap, "EDGEBRIDGE_WORKERS": "1"}
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the child runs on its own
            [*RUN_BRIDGE, str(config), "--log-format", "json", "--frontends", "sse"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def stop() -> None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            proc.kill()

        stack.callback(stop)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=1, linger_ms=0)
        stack.push_async_callback(producer.stop)
        await wait_listening(stream_port, proc)
        await producer.start()
        turn = [0]

        async def publish_all(value: bytes) -> None:
            await producer.send(f"{topic}-all", value)

        per_call = 1 if args.spread else groups

        async def publish_filtered(value: bytes) -> None:
            # Round robin over the filter values, so each group gets rate events/s: by default
            # one record per group per tick (an odds engine updating every market at once);
            # with --spread one record per call at rate x groups calls/s, evenly.
            for _ in range(per_call):
                f = str(turn[0] % groups).encode()
                turn[0] += 1
                await producer.send(f"{topic}-filtered", value, headers=[("f", f)])

        tree = Tree(proc.pid)
        servers = [
            Server("unfiltered", tree, stream_port, "/all", publish_all),
            Server("filtered", tree, stream_port, f"/filtered?f={{i}}%{groups}", publish_filtered),
        ]
        for server in servers:
            await connect(server, args, stack)
        for _ in range(args.rounds):
            for server in servers:
                spread = args.spread and server.name == "filtered"
                rate = args.rate * (groups if spread else 1)
                run = await measure(server, rate, args.seconds / args.rounds, latency=True)
                server.fixed_runs.append(run)
        results = {server.name: figures(server.fixed_runs) for server in servers}
        for name, fixed in results.items():
            print(
                f"{name} connected clients: {next(s for s in servers if s.name == name).result['connected']}"
            )
            print(f"{name} event-writes/s delivered: {fixed['writes_per_s']:.0f}")
            print(f"{name} latency p50 ms: {fixed['p50_ms']:.1f}")
            print(f"{name} latency p99 ms: {fixed['p99_ms']:.1f}")
            print(f"{name} server CPU (cores): {fixed['cpu']:.2f}")
            print(f"{name} server CPU per delivered event us: {cpu_per_write(fixed):.1f}")
        ratio = cpu_per_write(results["filtered"]) / max(1e-9, cpu_per_write(results["unfiltered"]))
        print(f"ratio filtered/unfiltered CPU per delivered event: {ratio:.2f}")
        p99 = results["filtered"]["p99_ms"] / max(1e-9, results["unfiltered"]["p99_ms"])
        print(f"ratio filtered/unfiltered p99 latency: {p99:.2f}")
    print(f"load average 1/5/15 min at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def compare(name: str, bridge: dict, raw: dict) -> None:
    ratio = bridge["saturated"]["writes_per_s"] / max(1.0, raw["saturated"]["writes_per_s"])
    print(f"ratio {name}/raw saturation event-writes/s: {ratio:.2f}")
    for phase in ("fixed", "saturated"):
        cost = cpu_per_write(bridge[phase]) / max(1e-9, cpu_per_write(raw[phase]))
        print(f"ratio {name}/raw {phase} CPU per event-write: {cost:.2f}")
    latency = bridge["fixed"]["p99_ms"] / max(1e-9, raw["fixed"]["p99_ms"])
    print(f"ratio {name}/raw fixed-rate p99 latency: {latency:.2f}")
    memory_ratio = bridge["rss_per_idle_connection_kib"] / max(
        1e-9, raw["rss_per_idle_connection_kib"]
    )
    print(f"ratio {name}/raw RSS per idle connection: {memory_ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=["driver", "raw-server", "clients"], default="driver")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=2.0, help="events/s at the fixed-rate phase")
    parser.add_argument("--saturate-rate", type=float, default=100.0, help="events/s at saturation")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split the fixed-rate phase into this many rounds taking turns between the servers",
    )
    parser.add_argument("--buffer", type=int, default=256 * 1024, help="bridge max_buffer_bytes")
    parser.add_argument("--only", choices=["raw"], help="measure the raw baseline only")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="bridge worker processes (edgebridge run --workers; the raw baseline stays one)",
    )
    parser.add_argument(
        "--listener",
        choices=["both", "edge", "hypercorn"],
        default="both",
        help="the HTTP listener server(s) to measure: edge (default, ours) or hypercorn (http2)",
    )
    parser.add_argument(
        "--filters",
        type=int,
        default=0,
        help="measure filtered fan-out: clients split over this many distinct filters (issue 16)",
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="(--filters) publish the filtered records evenly instead of one burst per tick",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the bridge's listener with TLS (self-signed; the raw baseline stays plain TCP)",
    )
    parser.add_argument("--port", type=int)
    parser.add_argument("--control-port", type=int)
    parser.add_argument("--path", default="/")
    parser.add_argument(
        "--probes", action="store_true", help="(clients role) read eagerly, time events"
    )
    args = parser.parse_args()
    # Every process on the event loop `edgebridge run` uses (uvloop when installed), so the
    # raw baseline and the bridge differ only in what they run on it.
    from bridge.process import event_loop

    if args.role == "raw-server":
        event_loop.run(raw_server(args.port, args.control_port))
    elif args.role == "clients":
        event_loop.run(generator("127.0.0.1", args.port, args.path, args.probes, args.tls))
    elif args.filters:
        asyncio.run(drive_filters(args))
    else:
        asyncio.run(drive(args))


if __name__ == "__main__":
    main()
