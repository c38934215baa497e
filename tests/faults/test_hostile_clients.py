"""Slow and hostile clients against one `edgebridge run` process: subscribers that never read,
silent and half-sent connections, a flood of CONNECTs, oversized frames. The bridge's memory
stays bounded, each offender gets a specific answer or is closed, and well-behaved clients on the
same process receive every record exactly as Kafka holds it."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from aiokafka import AIOKafkaProducer
from fault_load import (
    Instance,
    MqttSubscriber,
    SseReader,
    delivery_errors,
    kafka_records,
    mixed_routes,
)
from harness import BridgeProcess, config_text, free_port
from raw_mqtt import _open, _varint, mqtt_connect, mqtt_subscribe, read_packet

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`

RECORDS = 1500
RECORD_BYTES = 4096
SLOW_CLIENTS = 20  # per protocol; unbounded buffering would hold RECORDS x RECORD_BYTES each
MIB = 1 << 20


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Drain what the server sent; True once it closed the connection (EOF or reset)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 16):
                pass
        return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


async def slow_mqtt_subscriber(port: int, topic_filter: str) -> asyncio.StreamReader:
    reader, writer = await _open(port, rcvbuf=4096)
    writer.write(mqtt_connect(f"slow-{uuid.uuid4().hex[:8]}"))
    await read_packet(reader)  # CONNACK
    writer.write(mqtt_subscribe(topic_filter))
    return reader  # ...and never another read until the end


async def slow_sse_reader(port: int, path: str) -> asyncio.StreamReader:
    reader, writer = await _open(port, rcvbuf=4096)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return reader


async def connect_flood(port: int, count: int) -> None:
    """CONNECTs sent and abandoned as fast as possible, 100 at a time."""

    async def one() -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(mqtt_connect(f"flood-{uuid.uuid4().hex[:8]}"))
            writer.transport.abort()
        except OSError:
            pass

    for _ in range(count // 100):
        await asyncio.gather(*(one() for _ in range(100)))


@pytest.fixture
async def hostile_bridge(tmp_path: Path, kafka_bootstrap: str):  # type: ignore[no-untyped-def]
    s = uuid.uuid4().hex[:8]
    topic = f"hostile-{s}"
    instance = Instance(http_port=free_port(), mqtt_port=free_port())
    text = config_text(mixed_routes(s, topic), instance.mqtt_port, instance.http_port)
    # Silent connections must be dropped soon, not after the default 10 s.
    text = text.replace("[listeners.mqtt]\n", "[listeners.mqtt]\nconnect_timeout_s = 2\n", 1)
    path = tmp_path / "hostile.toml"
    path.write_text(text)
    process = await BridgeProcess(path, kafka_bootstrap).astart(wait_port=instance.http_port)
    yield process, instance, s, topic
    process.stop()


@pytest.mark.timeout(120)
async def test_hostile_clients_leave_memory_bounded_and_others_served(
    hostile_bridge, kafka_bootstrap: str
) -> None:  # type: ignore[no-untyped-def]
    process, instance, s, topic = hostile_bridge
    assert process.proc is not None
    bridge = psutil.Process(process.proc.pid)
    http = f"http://127.0.0.1:{instance.http_port}"
    stop = asyncio.Event()
    good_sse = SseReader([f"{http}/f{s}/all"])
    good_sse_task = asyncio.create_task(good_sse.run(stop))
    good_mqtt = await MqttSubscriber([instance.mqtt_port], f"f{s}/src/+", f"good-{s}").start()

    slow = [
        await slow_mqtt_subscriber(instance.mqtt_port, f"f{s}/src/+") for _ in range(SLOW_CLIENTS)
    ]
    slow += [await slow_sse_reader(instance.http_port, f"/f{s}/all") for _ in range(SLOW_CLIENTS)]
    silent = [await _open(instance.mqtt_port) for _ in range(100)]
    half_sent = [await _open(instance.http_port) for _ in range(50)]
    for _, writer in half_sent:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow")
    await asyncio.sleep(1)
    rss_before = bridge.memory_info().rss

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        flood = asyncio.create_task(connect_flood(instance.mqtt_port, 1000))
        pad = "x" * RECORD_BYTES
        for n in range(RECORDS):
            record = json.dumps({"src": "k", "n": n, "try": 0, "pad": pad}).encode()
            await producer.send(topic, record, key=b"k")
        await producer.flush()
        await flood
    finally:
        await producer.stop()

    # Oversized frames: each offender gets its protocol's own refusal.
    reader, writer = await _open(instance.mqtt_port)
    writer.write(mqtt_connect(f"big-{s}"))
    await read_packet(reader)  # CONNACK
    writer.write(bytes([0x30]) + _varint(200 * MIB))  # PUBLISH header announcing 200 MiB
    answer = await asyncio.wait_for(reader.read(1 << 16), 10)
    big_reader, big_writer = await _open(instance.http_port)
    big_writer.write(
        f"POST /f{s}/src/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {200 * MIB}\r\n\r\n{{".encode()
    )  # announces 200 MiB, sends one byte: refused at once, nothing buffered
    too_big = await asyncio.wait_for(big_reader.read(1 << 16), 10)
    big_writer.transport.abort()
    async with httpx.AsyncClient() as client:
        huge_id = await client.get(
            f"{http}/f{s}/all",
            headers={"Last-Event-ID": "A" * 20000, "Accept": "text/event-stream"},
        )

    stored = await kafka_records(kafka_bootstrap, topic, 3)
    total = sum(len(v) for v in stored.values())
    deadline = asyncio.get_running_loop().time() + 30
    while min(len(good_sse.events), len(good_mqtt.received)) < total:
        assert asyncio.get_running_loop().time() < deadline, (
            len(good_sse.events),
            len(good_mqtt.received),
            total,
        )
        await asyncio.sleep(0.1)
    rss_after = bridge.memory_info().rss
    stop.set()
    await good_sse_task
    await asyncio.to_thread(good_mqtt.stop)

    growth = (rss_after - rss_before) / MIB
    unbounded = 2 * SLOW_CLIENTS * RECORDS * RECORD_BYTES / MIB
    print(f"rss_before_mib={rss_before / MIB:.0f} growth_mib={growth:.0f}")
    print(f"unbounded_mib={unbounded:.0f}")
    assert total == RECORDS
    assert delivery_errors(good_sse.values(), stored, exact=True) == ""
    assert delivery_errors(good_mqtt.received, stored, exact=False) == ""
    assert growth < unbounded / 4, f"grew {growth:.0f} MiB"
    # Slow subscribers were closed by the bridge (it did not buffer for them forever).
    closed = [await closed_by_server(r, 10) for r in slow]
    assert all(closed), f"{closed.count(False)} of {len(slow)} slow clients still open"
    # Silent MQTT connections (no CONNECT) were dropped after connect_timeout_s.
    assert all([await closed_by_server(r, 5) for r, _ in silent])
    # Oversized: MQTT 5 DISCONNECT "Packet too large" (0x95); HTTP 413 problem+json; SSE 4xx.
    assert answer[:1] == b"\xe0" and b"\x95" in answer[:4], answer[:8]
    assert too_big.startswith(b"HTTP/1.1 413"), too_big[:200]
    assert b"application/problem+json" in too_big, too_big[:400]
    assert 400 <= huge_id.status_code < 500, huge_id.status_code
    assert process.proc.poll() is None and "Traceback" not in process.logs()
    for _, writer in [*silent, *half_sent]:
        writer.transport.abort()
