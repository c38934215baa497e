"""The gRPC listener's limits and transport: TLS with a self-signed certificate, a slow reader
cut off with RESOURCE_EXHAUSTED (and resuming exactly), oversized messages, and UNAVAILABLE
when Kafka is gone. A second bridge (TLS, tiny limits) serves the module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from grpc_support import BridgeClient, events, records
from harness import start_bridge
from tls_certs import self_signed

from bridge.kafka.embedded_broker import EmbeddedBroker
from bridge.model.config import parse_config
from bridge.process.runtime import Bridge
from protocols.grpc import edgebridge_pb2 as pb

MAX_QUEUED = 8
# The client's HTTP/2 window stays at its initial 64 KiB (no BDP growth), so a reader that stops
# reading stops the server's writes after a known amount and the queue behind them fills.
CLIENT_OPTIONS = [("grpc.http2.bdp_probe", 0)]


def routes(topic: str) -> str:
    return f"""
[listeners.grpc]
idempotency_session_timeout_ms = 1000  # the ledger group joins in ~0.5 s (not ~3 s)
host = "127.0.0.1"
port = 0
tls_cert = "cert.pem"
tls_key = "key.pem"
max_queued = {MAX_QUEUED}
max_message_bytes = 4096

[[routes]]
name = "feed"
topic = "{topic}"

[routes.grpc]

[kafka.topics.{topic}-table]
compact = true

[[routes]]
name = "table"
topic = "{topic}-table"

[routes.grpc]
start = "snapshot"
"""


class Tls:
    def __init__(self, bridge: Bridge, topic: str, cert: bytes, bootstrap: str) -> None:
        self.bridge = bridge
        self.topic = topic
        self.cert = cert
        self.bootstrap = bootstrap
        self.port: int = bridge.frontend("grpc").port

    def channel(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.cert)
        return grpc.aio.secure_channel(f"localhost:{self.port}", credentials, CLIENT_OPTIONS)


@pytest.fixture(scope="module")
async def tls(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tls]:
    directory = tmp_path_factory.mktemp("grpc-tls")
    cert, _ = self_signed(directory)
    topic = f"gl-{uuid.uuid4().hex[:8]}"
    bridge = await start_bridge(routes(topic), kafka_bootstrap, ["grpc"], directory=directory)
    try:
        yield Tls(bridge, topic, cert.read_bytes(), kafka_bootstrap)
    finally:
        await bridge.stop()


async def test_tls_with_a_self_signed_certificate(tls: Tls) -> None:
    async with tls.channel() as channel:
        reply = await BridgeClient(channel).produce("feed", b"over tls")
        assert reply.topic == tls.topic
    # The same port refuses a plaintext client.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await BridgeClient(plain).produce("feed", b"in clear", timeout=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_message_over_max_message_bytes_is_resource_exhausted(tls: Tls) -> None:
    async with tls.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await BridgeClient(channel).produce("feed", b"x" * 8192)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_slow_reader_is_cut_off_then_resumes_exactly(tls: Tls) -> None:
    service = tls.bridge.frontend("grpc").service
    closes_before = service.slow_closes
    values = [f"{i:04d}".encode() + b"." * 4000 for i in range(200)]  # ~800 KB: > the window
    async with tls.channel() as channel:
        client = BridgeClient(channel)
        call = client.subscribe("feed")
        marker = await call.read()
        assert marker.kind == pb.Event.MARKER
        producer = AIOKafkaProducer(bootstrap_servers=tls.bootstrap, linger_ms=5)
        await producer.start()
        try:
            # Two bursts: the first fills the client's window and stalls the writer (a burst
            # reaching an idle writer is taken whole), the second finds it stalled.
            for value in values[:100]:
                await producer.send(tls.topic, value)
            await producer.flush()
            first = await call.read()  # the writer has the first burst in hand
            for value in values[100:]:
                await producer.send(tls.topic, value)
            await producer.flush()
        finally:
            await producer.stop()
        # The reader reads nothing until the bridge has given up on it.
        for _ in range(400):
            if service.slow_closes > closes_before:
                break
            await asyncio.sleep(0.025)
        assert service.slow_closes == closes_before + 1
        got: list[pb.Event] = [first]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in events(call):
                got.append(event)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "last-message-id" in caught.value.details()
        assert len(got) < len(values)
        assert [e.value for e in got] == values[: len(got)]
        # Everything it missed, exactly, from its last id.
        resumed = client.subscribe("feed", last_id=got[-1].id)
        rest = await records(resumed, len(values) - len(got))
        assert [e.value for e in got + rest] == values
        resumed.cancel()


async def test_kafka_gone_is_unavailable(tmp_path: Path) -> None:
    broker = EmbeddedBroker()
    await broker.start()
    # Its own config (not the harness's): a short Kafka timeout keeps the wait for the refusal short.
    text = """
[kafka]
request_timeout_ms = 1000
fetch_max_wait_ms = 10

[listeners.mqtt]
enabled = false

[listeners.http]
enabled = false

[listeners.grpc]
idempotency_session_timeout_ms = 1000  # the ledger group joins in ~0.5 s (not ~3 s)
port = 0

[[routes]]
name = "feed"
topic = "gone"

[routes.grpc]
idempotency = "off"  # no ledger: its group would wait for the stopped broker when stopping
"""
    config = parse_config(text, tmp_path / "r.toml", {"KAFKA_BOOTSTRAP": broker.bootstrap})
    bridge = Bridge(config, frontends=["grpc"])
    await bridge.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bridge.frontend('grpc').port}") as ch:
            client = BridgeClient(ch)
            await client.produce("feed", b"while up")
            await broker.stop()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.produce("feed", b"while down", timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Kafka" in caught.value.details()
    finally:
        await asyncio.wait_for(bridge.stop(), 30)


async def test_a_reader_stalled_in_its_snapshot_is_cut_off_too(tls: Tls) -> None:
    service = tls.bridge.frontend("grpc").service
    closes_before = service.slow_closes
    table = f"{tls.topic}-table"
    producer = AIOKafkaProducer(bootstrap_servers=tls.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i in range(150):  # ~600 KB of latest values: more than the client's window
            await producer.send(table, b"s" * 4000, key=f"k{i}".encode())
        await producer.flush()
        feed = await tls.bridge.kafka[1].table(table)
        await feed.sync()  # the snapshot holds them all
        async with tls.channel() as channel:
            call = BridgeClient(channel).subscribe("table")
            first = await call.read()
            assert first.kind == pb.Event.SNAPSHOT
            # Live records while the writer is stuck in the snapshot the client does not read.
            for i in range(3 * MAX_QUEUED):
                await producer.send(table, b"live", key=f"live{i}".encode())
            await producer.flush()
            for _ in range(400):
                if service.slow_closes > closes_before:
                    break
                await asyncio.sleep(0.025)
            assert service.slow_closes == closes_before + 1
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in events(call):
                    pass
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await producer.stop()
