"""Issue 15, item 5: exact delivery at the MQTT edge, through real clients on one real bridge.

One bridge (module scope) serves every test here, each test on its own topic prefix:
keepalive caps for MQTT 5 and 3.1.1, reason-code DISCONNECTs that arrive before the close while
the client floods, one PUBLISH per message for overlapping subscriptions, and SUBSCRIBE decided
by the route a publish to the topic would take.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from mqtt_support import REPO, Paho, bridge_config, mqtt_port, unique

from bridge.model.config import parse_config
from bridge.process.runtime import Bridge
from protocols.mqtt.wire.codec import Decoder, encode
from protocols.mqtt.wire.packets import Connack, Connect

pytestmark = pytest.mark.broker

PREFIX = unique("x")
SERVER_KEEP_ALIVE = 60
MAX_KEEP_ALIVE = 30

ROUTES = f"""
[[routes]]
name = "open"
topic = "{PREFIX}-open"
key = "{{topic}}"

[routes.mqtt]
topic = "{PREFIX}/{{topic...}}"
"""


@pytest.fixture(scope="module")
async def bridge(kafka_bootstrap: str) -> AsyncIterator[Bridge]:
    text = bridge_config(
        ROUTES,
        max_keep_alive=MAX_KEEP_ALIVE,
        receive_maximum=4,
        max_packet_size=1024,
    )
    config = parse_config(text, REPO / "test-routing.toml", {"KAFKA_BOOTSTRAP": kafka_bootstrap})
    running = Bridge(config, frontends=["mqtt"])
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
def port(bridge: Bridge) -> int:
    return mqtt_port(bridge)


async def _raw_connect(
    port: int, version: int, keepalive: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Decoder, Connack]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        encode(Connect(protocol_level=version, client_id=unique("k"), keepalive=keepalive), version)
    )
    await writer.drain()
    decoder = Decoder(version=version, server=False)
    while True:
        data = await asyncio.wait_for(reader.read(1024), 10)
        assert data, "closed before CONNACK"
        packets = decoder.feed(data)
        if packets:
            assert isinstance(packets[0], Connack)
            return reader, writer, decoder, packets[0]


async def _until_closed(reader: asyncio.StreamReader, decoder: Decoder, timeout: float) -> list:
    packets: list = []
    while True:
        data = await asyncio.wait_for(reader.read(1 << 16), timeout)
        if not data:
            return packets
        packets.extend(decoder.feed(data))


# -- keepalive ---------------------------------------------------------------------------------


async def test_mqtt5_keepalive_longer_than_the_cap_gets_server_keep_alive(port):
    for asked in (0, 120):
        client = Paho(port, unique("k5"))
        _, code, props = await client.connect(keepalive=asked)
        assert code == 0
        assert props.ServerKeepAlive == MAX_KEEP_ALIVE
        await client.disconnect()


async def test_mqtt311_keepalive_above_the_cap_is_refused_with_return_code_2(port):
    for asked in (0, MAX_KEEP_ALIVE + 1):
        reader, writer, decoder, connack = await _raw_connect(port, 4, asked)
        assert connack.reason_code == 2  # identifier rejected, as mosquitto's max_keepalive
        assert await _until_closed(reader, decoder, 5) == []
        writer.close()


async def test_shorter_keepalives_are_kept_as_asked(port):
    _reader, writer, _decoder, connack = await _raw_connect(port, 4, MAX_KEEP_ALIVE)
    assert connack.reason_code == 0
    writer.close()
    client = Paho(port, unique("k5"))
    _, code, props = await client.connect(keepalive=10)
    assert code == 0 and getattr(props, "ServerKeepAlive", None) is None  # as asked
    await client.disconnect()


async def test_server_keep_alive_never_lengthens_an_mqtt311_keepalive(mqtt_bridge):
    port = mqtt_port(await mqtt_bridge(ROUTES, http=False, server_keep_alive=SERVER_KEEP_ALIVE))
    client = Paho(port, unique("k5"))
    _, code, props = await client.connect(keepalive=1)
    assert code == 0 and props.ServerKeepAlive == SERVER_KEEP_ALIVE  # MQTT 5 is told
    await client.disconnect()
    # A 3.1.1 client cannot be told another keepalive: held to its own 1 s (1.5 s of silence),
    # not to server_keep_alive's 60 s, so its will comes when it expects.
    reader, writer, decoder, connack = await _raw_connect(port, 4, 1)
    assert connack.reason_code == 0
    assert await _until_closed(reader, decoder, 10) == []  # 3.1.1: closed without a word
    writer.close()
