"""gRPC front-end targets (issue 17), each against a baseline measured in the same run.

Run: ``.venv/bin/python bench/grpc_frontend.py [--concurrency 32] [--seconds 6] [--streams 1000]``

1. Unary Produce at ``--concurrency`` concurrent calls (one grpcio aio channel, each worker one
   call at a time) against raw aiokafka ``send_and_wait`` with the same concurrency, on one
   embedded Tansu broker; the raw baseline runs before and after (the machine's load drifts) and
   the ratio uses their mean. Target: >= 0.3x with idempotency off (route ``bet``:
   ``idempotency = "off"``); the same with a fresh ``idempotency-key`` per call (route
   ``bet-once``: claim + record + completion through the ledger) is printed beside it.
   Then ``ProduceStream`` (many records on one call, replies in order): ``--concurrency``
   concurrent streams each sending records for the same time, records/s against the same raw
   baseline.
2. ``--streams`` Subscribe calls (100 per channel) on one route while a producer writes
   ``--rate`` records/s (every stream receives each: streams x rate deliveries/s). Latency is
   receive time minus the send time carried in the record (one host clock). Target: p99 <= 100 ms.
3. Memory per idle stream: the bridge's RSS with the streams open and idle minus its RSS before
   they opened, divided by the stream count.

The bridge runs as ``edgebridge run --workers 1`` in its own process (RSS is then one
process's). A second baseline is a trivial grpcio aio unary server (a subprocess answering each
call with its request) driven by the same client: the ceiling of Python gRPC on the machine, so
the Produce figure can be read against the stack it runs on. With ``h2load`` installed (``apt install
nghttp2-client``) the unary figures are taken again with it as the client (C, not Python: the
client's cost leaves the machine's shared CPU), for Produce and for the echo server: the echo
figure over raw is the ceiling any handler on grpcio's Python server can reach here.
Prints one figure per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge.kafka.embedded_broker import EmbeddedBroker, pick_free_port
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec
from protocols.grpc import edgebridge_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
BET = json.dumps({"userId": "u1", "amount": 5}).encode()
SCHEMA = {
    "type": "object",
    "required": ["userId", "amount"],
    "properties": {"userId": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
}
STREAMS_PER_CHANNEL = 100


def say(name: str, value: float | str) -> None:
    print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    """RSS of a process and its children (the workers of ``--workers N``), KiB."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_kib(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass  # a process that ended between listing and reading
    return total


async def run_workers(
    concurrency: int, seconds: float, one: Callable[[], Awaitable[None]]
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await one()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def raw_baseline(bootstrap: str, topic: str, concurrency: int, seconds: float) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        await producer.send_and_wait(topic, BET, key=b"warm")

        async def one() -> None:
            await producer.send_and_wait(topic, BET, key=b"u1")

        rate, _ = await run_workers(concurrency, seconds, one)
        return rate
    finally:
        await producer.stop()


def config(directory: Path, port: int, bets: str, feed: str) -> Path:
    (directory / "bet.json").write_text(json.dumps(SCHEMA))
    path = directory / "routing.toml"
    path.write_text(f"""
[bridge]
log_level = "warning"

[kafka]
fetch_max_wait_ms = 10

[listeners.mqtt]
enabled = false

[listeners.http]
host = "127.0.0.1"
port = 0

[listeners.grpc]
host = "127.0.0.1"
port = {port}
max_concurrent_streams = 1000

[[routes]]
name = "bet"
topic = "{bets}"
key = "{{$body.userId}}"
schema = "bet.json"
acks = "all"

[routes.grpc]
idempotency = "off"

[[routes]]
name = "bet-once"
topic = "{bets}"
key = "{{$body.userId}}"
schema = "bet.json"
acks = "all"

[routes.grpc]
idempotency = "required"

[[routes]]
name = "feed"
topic = "{feed}"

[routes.grpc]
""")
    return path


async def start_bridge(
    path: Path, bootstrap: str, port: int, workers: int
) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.process.cli",
        "run",
        "--config",
        str(path),
        "--workers",
        str(workers),
        cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap},
    )
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                return process
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    raise TimeoutError("the bridge's gRPC port did not answer")


async def serve_echo(port: int) -> None:
    """A trivial grpcio aio unary server (answers every call with its request): the ceiling of
    the Python gRPC stack itself on this machine, for the second baseline."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=bytes, response_serializer=bytes
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def echo_bench(concurrency: int, seconds: float) -> float:
    port = pick_free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--echo-port", str(port)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                "/bench.Echo/Echo", request_serializer=bytes, response_deserializer=bytes
            )
            body = pb.ProduceRequest(route="bet", value=BET).SerializeToString()
            await call(body, wait_for_ready=True, timeout=30)

            async def one() -> None:
                await call(body, timeout=10)

            rate, _ = await run_workers(concurrency, seconds, one)
            return rate
    finally:
        process.kill()
        await process.wait()


async def h2load_unary(
    port: int, method: str, message: bytes, concurrency: int, seconds: float
) -> tuple[float, int]:
    """Unary calls from h2load (nghttp2's C load generator: ``apt install nghttp2-client``):
    ``concurrency`` streams on one HTTP/2 connection, each POSTing the gRPC-framed ``message``.
    A native client takes the Python client's CPU out of the figure. Returns (calls/s, calls
    answered 200); a call's grpc-status is in its trailers, which h2load does not read, so the
    caller checks what the calls did."""
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        body.write(b"\x00" + struct.pack(">I", len(message)) + message)
        body.flush()
        process = await asyncio.create_subprocess_exec(
            "h2load",
            "-n",
            "100000000",
            "-D",
            str(int(seconds)),
            "-c",
            "1",
            "-m",
            str(concurrency),
            "-d",
            body.name,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://127.0.0.1:{port}{method}",
            stdout=asyncio.subprocess.PIPE,
        )
        output = (await process.communicate())[0].decode()
    rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)
    ok = re.search(r"status codes: (\d+) 2xx", output)
    if rate is None or ok is None:
        raise RuntimeError(f"h2load said: {output[-800:]}")
    return float(rate.group(1)), int(ok.group(1))


async def end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or {0}
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def native_client_figures(
    port: int, bootstrap: str, topic: str, concurrency: int, seconds: float, raw: float
) -> None:
    """The Produce figure and the ceiling of grpcio's server with h2load as the client."""
    if shutil.which("h2load") is None:
        say("h2load figures", "skipped (apt install nghttp2-client)")
        return
    request = pb.ProduceRequest(route="bet", value=BET).SerializeToString()
    before = await end_offset(bootstrap, topic)
    rate, answered = await h2load_unary(
        port, "/edgebridge.v1.Bridge/Produce", request, concurrency, seconds
    )
    produced = await end_offset(bootstrap, topic) - before
    say("gRPC Produce, h2load client (calls/s)", rate)
    say(
        "gRPC Produce, h2load client: records produced / calls answered", f"{produced} / {answered}"
    )
    say("gRPC Produce, h2load client / raw (target >= 0.3)", rate / raw)
    echo_port = pick_free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--echo-port", str(echo_port)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as channel:
            call = channel.unary_unary(
                "/bench.Echo/Echo", request_serializer=bytes, response_deserializer=bytes
            )
            await call(request, wait_for_ready=True, timeout=30)
        echo, _ = await h2load_unary(echo_port, "/bench.Echo/Echo", request, concurrency, seconds)
    finally:
        process.kill()
        await process.wait()
    say("trivial grpcio aio echo server, h2load client (calls/s)", echo)
    say("trivial grpcio aio echo server, h2load client / raw: the stack's ceiling", echo / raw)
    say("gRPC Produce / echo, both h2load", rate / echo)


async def produce_bench(
    port: int, concurrency: int, seconds: float, idempotent: bool = False
) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/edgebridge.v1.Bridge/Produce",
            request_serializer=pb.ProduceRequest.SerializeToString,
            response_deserializer=pb.ProduceReply.FromString,
        )
        request = pb.ProduceRequest(route="bet-once" if idempotent else "bet", value=BET)
        keys = iter(range(10**9))
        run = uuid.uuid4().hex[:8]

        def metadata() -> list[tuple[str, str]]:
            return [("idempotency-key", f"{run}-{next(keys)}")] if idempotent else []

        await call(request, metadata=metadata())

        async def one() -> None:
            await call(request, metadata=metadata(), timeout=10)

        return await run_workers(concurrency, seconds, one)


async def produce_stream_bench(port: int, concurrency: int, seconds: float) -> float:
    """``concurrency`` ProduceStream calls, each sending records until the time is up; the
    records/s whose replies came back."""
    answered = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(
            "/edgebridge.v1.Bridge/ProduceStream",
            request_serializer=pb.ProduceRequest.SerializeToString,
            response_deserializer=pb.ProduceReply.FromString,
        )
        request = pb.ProduceRequest(route="bet", value=BET)
        deadline = time.perf_counter() + seconds

        async def requests() -> AsyncIterator[pb.ProduceRequest]:
            while time.perf_counter() < deadline:
                yield request

        async def one_stream() -> None:
            nonlocal answered
            async for _ in method(requests(), timeout=seconds + 30):
                answered += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_stream() for _ in range(concurrency)))
        return answered / (time.perf_counter() - started)


async def stream_bench(
    port: int,
    bootstrap: str,
    topic: str,
    bridge_pid: int,
    streams: int,
    rate: float,
    seconds: float,
) -> None:
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        for _ in range((streams + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)
    ]
    before = rss_kib(bridge_pid)
    latencies: list[float] = []
    opened = 0
    all_open = asyncio.Event()

    async def reader(channel: grpc.aio.Channel) -> None:
        nonlocal opened
        call = channel.unary_stream(
            "/edgebridge.v1.Bridge/Subscribe",
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.Event.FromString,
        )(pb.SubscribeRequest(route="feed"))
        first = await call.read()  # the MARKER: the subscription exists
        assert first.kind == pb.Event.MARKER
        opened += 1
        if opened == streams:
            all_open.set()
        while True:
            event = await call.read()
            if event is grpc.aio.EOF:
                return
            latencies.append((time.time() - float(event.value)) * 1000)

    tasks = [
        asyncio.create_task(reader(channels[i // STREAMS_PER_CHANNEL])) for i in range(streams)
    ]
    await asyncio.wait_for(all_open.wait(), 120)
    await asyncio.sleep(2)  # let allocations settle before reading RSS
    idle = rss_kib(bridge_pid)
    say("idle streams open", streams)
    say("bridge RSS before streams (MiB)", before / 1024)
    say("bridge RSS with idle streams (MiB)", idle / 1024)
    say("memory per idle stream (KiB)", (idle - before) / streams)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        interval = 1 / rate
        deadline = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            await producer.send_and_wait(topic, repr(time.time()).encode())
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.sleep(1)  # the last deliveries
    finally:
        await producer.stop()
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()
    expected = streams * int(seconds * rate)
    say("deliveries", f"{len(latencies)} of ~{expected}")
    if latencies:
        say("stream delivery p50 (ms)", statistics.median(latencies))
        say("stream delivery p99 (ms)", percentile(latencies, 0.99))
        say("stream p99 target (ms)", "<= 100")


async def main(args: argparse.Namespace) -> None:
    async with EmbeddedBroker() as broker:
        run = uuid.uuid4().hex[:6]
        bets, raw, feed = f"bets-{run}", f"raw-{run}", f"feed-{run}"
        settings = KafkaSettings(bootstrap="external")
        await ensure_topics(settings, broker.bootstrap, [TopicSpec(t) for t in (bets, raw, feed)])
        port = pick_free_port()
        with tempfile.TemporaryDirectory() as directory:
            path = config(Path(directory), port, bets, feed)
            bridge = await start_bridge(path, broker.bootstrap, port, args.workers)
            try:
                say("concurrency", args.concurrency)
                raw_before = await raw_baseline(
                    broker.bootstrap, raw, args.concurrency, args.seconds
                )
                say("raw aiokafka send_and_wait (rec/s, before)", raw_before)
                rate, latencies = await produce_bench(port, args.concurrency, args.seconds)
                raw_after = await raw_baseline(
                    broker.bootstrap, raw, args.concurrency, args.seconds
                )
                say("raw aiokafka send_and_wait (rec/s, after)", raw_after)
                say("gRPC Produce (calls/s)", rate)
                say("gRPC Produce p50 (ms)", statistics.median(latencies))
                say("gRPC Produce p99 (ms)", percentile(latencies, 0.99))
                say("gRPC Produce / raw (target >= 0.3)", rate / ((raw_before + raw_after) / 2))
                once, once_latencies = await produce_bench(
                    port, args.concurrency, args.seconds, idempotent=True
                )
                say("gRPC Produce with idempotency-key (calls/s)", once)
                say("gRPC Produce with idempotency-key p99 (ms)", percentile(once_latencies, 0.99))
                say(
                    "gRPC Produce with idempotency-key / raw", once / ((raw_before + raw_after) / 2)
                )
                streamed = await produce_stream_bench(port, args.concurrency, args.seconds)
                raw_last = await raw_baseline(broker.bootstrap, raw, args.concurrency, args.seconds)
                say("raw aiokafka send_and_wait (rec/s, after streams)", raw_last)
                say("gRPC ProduceStream (records/s)", streamed)
                say(
                    "gRPC ProduceStream / raw (target >= 0.3)",
                    streamed / ((raw_before + raw_after + raw_last) / 3),
                )
                echo = await echo_bench(args.concurrency, args.seconds)
                say("trivial grpcio aio echo server (calls/s)", echo)
                say("gRPC Produce / trivial grpcio echo", rate / echo)
                await native_client_figures(
                    port,
                    broker.bootstrap,
                    bets,
                    args.concurrency,
                    args.seconds,
                    (raw_before + raw_after + raw_last) / 3,
                )
                await stream_bench(
                    port,
                    broker.bootstrap,
                    feed,
                    bridge.pid,
                    args.streams,
                    args.rate,
                    args.stream_seconds,
                )
            finally:
                bridge.terminate()
                await bridge.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2.0, help="records/s on the stream route")
    parser.add_argument("--stream-seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1, help="bridge worker processes")
    parser.add_argument("--echo-port", type=int, help=argparse.SUPPRESS)  # the echo subprocess
    arguments = parser.parse_args()
    if arguments.echo_port:
        asyncio.run(serve_echo(arguments.echo_port))
    else:
        asyncio.run(main(arguments))
