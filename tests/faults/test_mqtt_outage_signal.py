"""MQTT while Kafka is away.

Regression: a QoS 1 publish that Kafka cannot take is left unacknowledged, so the client
sends it again after reconnecting (found by the broker-outage test: MQTT 5 clients were given
PUBACK 0x80, which ends the exchange, and paho never re-sent the message).

An outage longer than ``instance_timeout_s`` makes every instance's heartbeat old: nobody may
take a live instance for dead then, and publish the wills of its open connections."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import AsyncIterator

import paho.mqtt.client as paho
import pytest
from aiokafka import AIOKafkaConsumer
from kafka_faults import FaultyKafka
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`


@pytest.fixture
async def proxied_kafka() -> AsyncIterator[FaultyKafka]:
    kafka = await FaultyKafka().start()
    yield kafka
    await kafka.stop()


async def until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition set by paho's network thread (no asyncio event to wait on there)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.timeout(150)
async def test_mqtt5_publish_during_outage_is_resent_not_refused(
    proxied_kafka: FaultyKafka,
) -> None:
    s = uuid.uuid4().hex[:8]
    topic = f"outage-{s}"
    routes = f"""
[[routes]]
name = "r-{s}"
topic = "{topic}"
key = "{{t}}"
[routes.mqtt]
topic = "o/{s}/{{t}}"
"""
    bridge = await proxied_kafka.start_bridge(routes, ["mqtt"])
    lock = threading.Lock()
    disconnects: list[int] = []
    acks: list[tuple[int, int]] = []
    connected = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"c-{s}", protocol=paho.MQTTv5)
    client.reconnect_delay_set(0.5, 1)

    def on_connect(c, u, flags, reason, props):  # type: ignore[no-untyped-def]
        connected.set()

    def on_disconnect(c, u, flags, reason, props):  # type: ignore[no-untyped-def]
        with lock:
            disconnects.append(reason.value)

    def on_publish(c, u, mid, reason, props):  # type: ignore[no-untyped-def]
        with lock:
            acks.append((mid, reason.value))

    client.on_connect, client.on_disconnect, client.on_publish = (
        on_connect,
        on_disconnect,
        on_publish,
    )
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 300
    try:
        client.connect(
            "127.0.0.1", bridge.frontend("mqtt").port, clean_start=False, properties=properties
        )
        client.loop_start()
        assert await asyncio.to_thread(connected.wait, 30)
        proxied_kafka.proxy.cut()
        info = client.publish(f"o/{s}/a", b"during-outage", qos=1)
        await until(lambda: bool(disconnects), 60)
        assert disconnects[0] == 0x89  # Server busy: told why, and not acknowledged
        assert not any(mid == info.mid for mid, _ in acks)
        proxied_kafka.proxy.restore()
        await until(lambda: any(mid == info.mid for mid, _ in acks), 90)
        assert (info.mid, 0) in acks  # re-sent after reconnecting, then acknowledged
    finally:
        client.loop_stop()
        client.disconnect()
        await bridge.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=proxied_kafka.direct, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
        values = [r.value for records in batches.values() for r in records]
    finally:
        await consumer.stop()
    assert b"during-outage" in values


async def read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        return [r.value for records in batches.values() for r in records]
    finally:
        await consumer.stop()


@pytest.mark.timeout(150)
async def test_an_outage_longer_than_the_instance_timeout_publishes_no_will_of_a_live_client(
    proxied_kafka: FaultyKafka,
) -> None:
    s = uuid.uuid4().hex[:8]
    topic = f"wills-{s}"
    routes = f"""
[[routes]]
name = "w-{s}"
topic = "{topic}"
key = "{{t}}"
[routes.mqtt]
topic = "w/{s}/{{t}}"
"""
    options = "instance_timeout_s = 2"
    a = await proxied_kafka.start_bridge(routes, ["mqtt"], options)
    b = await proxied_kafka.start_bridge(routes, ["mqtt"], options)  # watches a's wills
    connected = threading.Event()
    board = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"b-{s}", protocol=paho.MQTTv5)
    board.on_connect = lambda *args: connected.set()
    board.will_set(f"w/{s}/board", b"gone", qos=1)
    try:
        board.connect("127.0.0.1", a.frontend("mqtt").port, keepalive=60)
        board.loop_start()
        assert await asyncio.to_thread(connected.wait, 30)
        await asyncio.sleep(1.0)  # armed in the sessions table, seen by b
        proxied_kafka.proxy.cut()
        await asyncio.sleep(6.0)  # three timeouts without any heartbeat
        proxied_kafka.proxy.restore()
        await asyncio.sleep(6.0)  # three more, with the table flowing again
        assert b"gone" not in await read_all(proxied_kafka.direct, topic)
        # the wills still work: the connection dies, its will is published, once
        sock = board.socket()
        board.loop_stop()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        await asyncio.sleep(3.0)
        assert (await read_all(proxied_kafka.direct, topic)).count(b"gone") == 1
    finally:
        board.loop_stop()
        await b.stop()
        await a.stop()
