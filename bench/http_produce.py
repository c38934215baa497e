"""HTTP produce with Idempotency-Key (acks=all) against raw aiokafka ``send_and_wait``, same run.

Run: ``.venv/bin/python bench/http_produce.py [--concurrency 32] [--seconds 8]``

Both sides run against one embedded Tansu broker, with the same number of concurrent workers,
each doing one request (or one ``send_and_wait``) at a time. The bridge runs as ``edgebridge
run`` in its own process, so its CPU is not shared with the load generator. The HTTP load
generator is ``wrk`` (C; Debian package ``wrk``) with ``bench/http_produce.lua``, one keep-alive
connection per worker; without wrk (or with ``--client python``) a minimal Python HTTP/1.1
client is used, which costs the shared CPU far more per request. The raw baseline is measured
before and after the HTTP runs (the machine's load drifts) and the ratio uses their mean.
Every HTTP request has a new Idempotency-Key, so each is claimed, produced and completed (three
Kafka writes and one read-back); the raw side writes one record. Both this process and the
bridge run on the same event loop (uvloop when installed; ``EDGEBRIDGE_EVENT_LOOP=asyncio`` for
the standard one). Prints one figure per line, then the ratio of requests/s (target >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bridge.kafka.embedded_broker import EmbeddedBroker, pick_free_port
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec
from bridge.process import event_loop

REPO = Path(__file__).resolve().parents[1]
WRK_SCRIPT = Path(__file__).with_name("http_produce.lua")
BET = {"userId": "u1", "matchId": "m1", "team": "home", "amount": 5}
SCHEMA = {
    "type": "object",
    "required": ["userId", "matchId", "amount"],
    "properties": {
        "userId": {"type": "string"},
        "matchId": {"type": "string"},
        "team": {"enum": ["home", "away"]},
        "amount": {"type": "number", "exclusiveMinimum": 0},
    },
}


def say(name: str, value: float | str) -> None:
    print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}", flush=True)


async def run_workers(
    concurrency: int, seconds: float, one: Callable[[int], Awaitable[None]]
) -> tuple[int, list[float]]:
    """Run ``one(worker)`` in a loop on every worker for ``seconds``; latencies in ms."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await one(index)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return round(len(latencies) / (time.perf_counter() - started)), latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (workers), from /proc."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass  # a process that ended between listing and reading
    return total


def median_of(latencies: list[float], client: str) -> float:
    """p50 in ms: wrk reports [p50, p99]; the Python client every latency."""
    return latencies[0] if client == "wrk" else statistics.median(latencies)


def p99_of(latencies: list[float], client: str) -> float:
    return latencies[1] if client == "wrk" else percentile(latencies, 0.99)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_baseline(
    bootstrap: str, topic: str, concurrency: int, seconds: float
) -> tuple[int, list[float]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    body = json.dumps(BET).encode()
    try:
        await producer.send_and_wait(topic, body, key=b"warm")

        async def one(_: int) -> None:
            await producer.send_and_wait(topic, body, key=b"u1", headers=[("correlation-id", b"x")])

        return await run_workers(concurrency, seconds, one)
    finally:
        await producer.stop()


class Connection:
    """One keep-alive HTTP/1.1 connection: POST, read status + body (Content-Length only)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, port: int) -> Connection:
        connection = cls(port)
        await connection._connect()
        return connection

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None:
            await self._connect()  # the server ended the last one (Hypercorn: 1000 requests)
        assert self.reader is not None and self.writer is not None
        head = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        await self.reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def http_run(
    port: int, concurrency: int, seconds: float, path: str = "/bets", keyed: bool = True
) -> tuple[int, list[float], dict[int, int]]:
    connections = [await Connection.open(port) for _ in range(concurrency)]
    body = json.dumps(BET).encode()
    statuses: dict[int, int] = {}

    def headers() -> dict[str, str]:
        keys = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
        return {"Content-Type": "application/json", **keys}

    async def one(index: int) -> None:
        status = await connections[index].post(path, body, headers())
        statuses[status] = statuses.get(status, 0) + 1

    await connections[0].post(path, body, headers())  # warm up the route's producer and feeds
    try:
        rps, latencies = await run_workers(concurrency, seconds, one)
    finally:
        for connection in connections:
            connection.close()
    return rps, latencies, statuses


async def wrk_run(
    port: int, concurrency: int, seconds: float, path: str = "/bets", keyed: bool = True
) -> tuple[int, list[float], dict[int, int]]:
    """The same load from wrk: requests/s, [p50, p99] latency in ms, statuses."""
    warm = await Connection.open(port)  # the route's producer and feeds start on first use
    key = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
    await warm.post(path, json.dumps(BET).encode(), {"Content-Type": "application/json", **key})
    warm.close()
    env = {**os.environ, "KEYS": "on" if keyed else "off"}
    threads = str(min(concurrency, max(1, os.cpu_count() or 1)))
    process = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}{path}",
        env=env,
        stdout=subprocess.PIPE,
    )
    out = (await process.communicate())[0].decode()
    figures = dict(re.findall(r"^(latency_p\d+_us|Requests/sec|statuses):\s*(.+)$", out, re.M))
    if process.returncode != 0 or "statuses" not in figures:
        raise RuntimeError(f"wrk failed:\n{out}")
    latencies = [int(figures["latency_p50_us"]) / 1000, int(figures["latency_p99_us"]) / 1000]
    statuses = {int(k): v for k, v in json.loads(figures["statuses"]).items()}
    for line in out.splitlines():
        if "Non-2xx" in line or "Socket errors" in line:
            say("wrk_note", line.strip())
    return round(float(figures["Requests/sec"])), latencies, statuses


def bridge_config(port: int, topic: str, schema: Path, plain_topic: str = "plain") -> str:
    return f"""
[bridge]
name = "bench"
log_level = "warning"

[kafka]
acks = "all"
fetch_max_wait_ms = 10

[listeners.mqtt]
enabled = false

[listeners.http]
host = "127.0.0.1"
port = {port}

[[routes]]
name = "bet"
topic = "{topic}"
key = "{{$body.userId}}"
content_type = "application/json"
schema = "{schema}"
acks = "all"

[routes.http]
method = "POST"
path = "/bets"
idempotency = "required"

[[routes]]
name = "plain"
topic = "{plain_topic}"
key = "{{$body.userId}}"
content_type = "application/json"
schema = "{schema}"
acks = "all"

[routes.http]
method = "POST"
path = "/plain"
idempotency = "off"
"""


async def wait_for_port(
    port: int, process: asyncio.subprocess.Process, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError("bridge exited")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError("bridge did not open its port")


async def count_records(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        count = 0
        while True:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=10000)
            count += len(batch.get(tp, []))
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                return count
    finally:
        await consumer.stop()


async def main(concurrency: int, seconds: float, workers: int, client: str) -> None:
    async with EmbeddedBroker() as broker:
        settings = KafkaSettings(bootstrap="external")
        raw_topic, http_topic, plain_topic = (
            f"{t}-{uuid.uuid4().hex[:6]}" for t in ("raw", "bets", "plain")
        )
        topics = [TopicSpec(raw_topic), TopicSpec(http_topic), TopicSpec(plain_topic)]
        await ensure_topics(settings, broker.bootstrap, topics)
        say("concurrency", str(concurrency))
        say("bridge_workers", str(workers))
        say("event_loop", "uvloop" if event_loop.loop_factory() else "asyncio")
        say("http_client", client)
        say("load_average_1min_at_start", os.getloadavg()[0])
        # CPU per request of the Python side (this process) and of the broker, to show where
        # the shared cores go: the raw client's cost is what the bridge's cost compares with.
        own_before, broker_before = time.process_time(), cpu_seconds(broker.pid)
        raw_rps, raw_lat = await raw_baseline(broker.bootstrap, raw_topic, concurrency, seconds)
        raw_cpu = (time.process_time() - own_before) / max(1, len(raw_lat))
        raw_broker_cpu = (cpu_seconds(broker.pid) - broker_before) / max(1, len(raw_lat))
        run_http = wrk_run if client == "wrk" else http_run
        with tempfile.TemporaryDirectory() as directory:
            schema = Path(directory) / "bet.json"
            schema.write_text(json.dumps(SCHEMA))
            port = pick_free_port()
            config = Path(directory) / "routing.toml"
            config.write_text(bridge_config(port, http_topic, schema, plain_topic))
            env = {**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap}
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bridge.process.cli",
                "run",
                "--config",
                str(config),
                "--frontends",
                "http",
                "--workers",
                str(workers),
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await wait_for_port(port, process)
                cpu_before, broker_before = cpu_seconds(process.pid), cpu_seconds(broker.pid)
                http_rps, http_lat, statuses = await run_http(port, concurrency, seconds)
                http_n = sum(statuses.values())
                http_cpu = (cpu_seconds(process.pid) - cpu_before) / max(1, http_n)
                http_broker_cpu = (cpu_seconds(broker.pid) - broker_before) / max(1, http_n)
                cpu_before = cpu_seconds(process.pid)
                plain_rps, plain_lat, plain_statuses = await run_http(
                    port, concurrency, seconds, "/plain", keyed=False
                )
                plain_n = sum(plain_statuses.values())
                plain_cpu = (cpu_seconds(process.pid) - cpu_before) / max(1, plain_n)
            finally:
                process.terminate()
                await process.wait()
        raw_after, raw_lat_after = await raw_baseline(
            broker.bootstrap, raw_topic, concurrency, seconds
        )
        records = await count_records(broker.bootstrap, http_topic)
    raw_mean = (raw_rps + raw_after) / 2
    say("raw_send_and_wait_requests_per_s_before", str(raw_rps))
    say("raw_send_and_wait_requests_per_s_after", str(raw_after))
    say("raw_send_and_wait_p50_ms", statistics.median(raw_lat + raw_lat_after))
    say("raw_send_and_wait_p99_ms", percentile(raw_lat + raw_lat_after, 0.99))
    say("raw_client_cpu_ms_per_send", raw_cpu * 1000)
    say("raw_broker_cpu_ms_per_send", raw_broker_cpu * 1000)
    say("http_idempotent_requests_per_s", str(http_rps))
    say("http_idempotent_p50_ms", median_of(http_lat, client))
    say("http_idempotent_p99_ms", p99_of(http_lat, client))
    say("http_idempotent_bridge_cpu_ms_per_request", http_cpu * 1000)
    say("http_idempotent_broker_cpu_ms_per_request", http_broker_cpu * 1000)
    say("http_plain_no_key_requests_per_s", str(plain_rps))
    say("http_plain_no_key_p50_ms", median_of(plain_lat, client))
    say("http_plain_no_key_p99_ms", p99_of(plain_lat, client))
    say("http_plain_no_key_bridge_cpu_ms_per_request", plain_cpu * 1000)
    say("load_average_1min_at_end", os.getloadavg()[0])
    say("http_statuses", json.dumps(statuses, sort_keys=True))
    # wrk stops counting at its deadline with one request per connection still in flight (the
    # bridge completes those), plus one warm-up request: records beyond the counted 202s must not
    # exceed that, or some request produced twice.
    say("http_records_beyond_counted_202", str(records - statuses.get(202, 0)))
    say("http_records_beyond_allowed", str(concurrency + 1))
    say("ratio_http_to_raw", f"{http_rps / raw_mean:.3f}")
    say("ratio_http_plain_to_raw", f"{plain_rps / raw_mean:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=1, help="bridge worker processes")
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="HTTP load generator (default: wrk when installed)",
    )
    arguments = parser.parse_args()
    event_loop.run(
        main(arguments.concurrency, arguments.seconds, arguments.workers, arguments.client)
    )
