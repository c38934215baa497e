"""Regression: a persistent MQTT session connecting while Kafka does not answer ListOffsets.

Found by bench/connections.py at ~60k connections: the session store's read-your-writes sync
raised aiokafka's KafkaTimeoutError, which the CONNECT handler did not expect, so the connection
died with an ``mqtt.client_failed`` traceback and no CONNACK. Now the client is told "Server
unavailable" (0x88) in its own protocol and can retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from kafka_faults import FaultyKafka
from raw_mqtt import _open, mqtt_connect, read_packet

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`

ROUTES = """
[[routes]]
name = "s"
topic = "store-{s}"
key = "{{x}}"
[routes.mqtt]
topic = "store{s}/{{x}}"
"""


@pytest.fixture
async def proxied_kafka() -> AsyncIterator[FaultyKafka]:
    kafka = await FaultyKafka().start()
    yield kafka
    await kafka.stop()


def persistent_connect(client_id: str) -> bytes:
    """MQTT 5 CONNECT without clean start, session expiry 600 s."""
    packet = bytearray(mqtt_connect(client_id))
    at = packet.index(b"MQTT") + 4
    packet[at + 1] = 0x00  # flags: no clean start
    props = b"\x11" + (600).to_bytes(4, "big")
    body = bytes(packet[2 : at + 4]) + bytes([len(props)]) + props + bytes(packet[at + 5 :])
    return bytes([0x10, len(body)]) + body


@pytest.mark.timeout(90)
async def test_connect_during_kafka_outage_gets_server_unavailable(
    proxied_kafka: FaultyKafka,
) -> None:
    s = uuid.uuid4().hex[:8]
    bridge = await proxied_kafka.start_bridge(ROUTES.format(s=s), ["mqtt"])
    try:
        proxied_kafka.proxy.cut()
        reader, writer = await _open(bridge.frontend("mqtt").port)
        writer.write(persistent_connect(f"store-{s}"))
        connack = await asyncio.wait_for(read_packet(reader), 60)
        writer.transport.abort()
    finally:
        proxied_kafka.proxy.restore()
        await bridge.stop()
    assert connack[0] == 0x20 and connack[2] == 0x88, connack  # CONNACK, Server unavailable
