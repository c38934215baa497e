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
from raw_mqtt import mqtt_publish, read_packet

from bridge.model.config import parse_config
from bridge.process.runtime import Bridge
from protocols.mqtt.wire.codec import Decoder, encode
from protocols.mqtt.wire.packets import Connack, Connect, Disconnect, Pingresp

pytestmark = pytest.mark.broker

PREFIX = unique("x")
SERVER_KEEP_ALIVE = 60
MAX_KEEP_ALIVE = 30

ROUTES = f"""
[[routes]]
name = "vault"
topic = "{PREFIX}-vault"
key = "{{item}}"

[routes.mqtt]
topic = "{PREFIX}/vault/{{item}}/secret"

[routes.access]
subscribe = ["admin"]

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


# -- a reason-code DISCONNECT reaches a client that keeps sending ---------------------------------

PINGREQ = b"\xc0\x00"


async def _flood_until_closed(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    trigger: bytes = b"",
    answered: asyncio.Event | None = None,
) -> list:
    """Send ``trigger``, then keep sending PINGREQs while reading everything the server sends
    until it closes. A connection reset (instead of the server's FIN) fails the test."""
    decoder = Decoder(version=5, server=False)
    packets: list = []
    closed = asyncio.Event()

    async def flood() -> None:
        writer.write(trigger)
        while not closed.is_set():
            try:
                writer.write(PINGREQ * 256)
                await writer.drain()
            except (ConnectionError, OSError):
                return  # the server closed: what it said before is what counts
            await asyncio.sleep(0)

    flooding = asyncio.create_task(flood())
    try:
        while True:
            data = await asyncio.wait_for(reader.read(1 << 16), 10)
            if not data:
                break
            packets.extend(decoder.feed(data))
            if answered is not None:
                answered.set()
    finally:
        closed.set()
        await flooding
        writer.close()
    return [p for p in packets if not isinstance(p, Pingresp)]


async def _connected_raw(
    port: int, client_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Connect(protocol_level=5, client_id=client_id, keepalive=60), 5))
    connack = await read_packet(reader)
    assert connack[0] == 0x20 and connack[2] == 0, connack  # kind, flags, reason code
    return reader, writer


def _disconnect_code(packets: list) -> int:
    assert packets and isinstance(packets[-1], Disconnect), packets
    return int(packets[-1].reason_code)


async def test_receive_maximum_exceeded_disconnect_reaches_a_flooding_client(port):
    reader, writer = await _connected_raw(port, unique("d"))
    burst = b"".join(
        mqtt_publish(f"{PREFIX}/flood", b"x", qos=1, packet_id=i) for i in range(1, 40)
    )  # receive_maximum is 4: one read holds more than 4 unacknowledged QoS 1 publishes
    packets = await _flood_until_closed(reader, writer, burst)
    assert _disconnect_code(packets) == 0x93


async def test_packet_too_large_disconnect_reaches_a_flooding_client(port):
    reader, writer = await _connected_raw(port, unique("d"))
    packets = await _flood_until_closed(
        reader, writer, mqtt_publish(f"{PREFIX}/big", b"x" * 4096, qos=0)
    )
    assert _disconnect_code(packets) == 0x95


async def test_session_taken_over_disconnect_reaches_a_flooding_client(port):
    client_id = unique("d")
    reader, writer = await _connected_raw(port, client_id)
    answered = asyncio.Event()
    flooding = asyncio.create_task(_flood_until_closed(reader, writer, answered=answered))
    await asyncio.wait_for(answered.wait(), 10)  # flooding (and answered) when the new one comes
    _, new_writer = await _connected_raw(port, client_id)
    packets = await flooding
    assert _disconnect_code(packets) == 0x8E
    new_writer.close()


# -- SUBSCRIBE decided by the route a publish would take ---------------------------------------


async def test_literal_topic_is_refused_by_its_own_route_not_granted_by_a_catch_all(port):
    client = Paho(port, unique("s"))
    await client.connect()
    # a publish to it would take the "vault" route, which refuses anonymous readers; the
    # catch-all "open" route would grant it but is not the route of this topic
    assert await client.subscribe(f"{PREFIX}/vault/a/secret", qos=1) == [0x87]
    assert await client.subscribe(f"{PREFIX}/vault/a/note", qos=1) == [1]  # the catch-all's
    await client.disconnect()


async def test_wildcard_over_overlapping_routes_gets_only_the_routes_that_allow_it(port):
    reader = Paho(port, unique("s"))
    await reader.connect()
    # both routes intersect the filter; granted because "open" allows it, fed only from "open"
    assert await reader.subscribe(f"{PREFIX}/vault/#", qos=1) == [1]
    writer = Paho(port, unique("w"))
    await writer.connect()
    assert await writer.publish(f"{PREFIX}/vault/a/secret", "secret", qos=1) == 0  # in Kafka
    assert await writer.publish(f"{PREFIX}/vault/a/note", "note", qos=1) == 0
    message = await reader.get()
    assert (message.topic, message.payload) == (f"{PREFIX}/vault/a/note", b"note")
    await reader.nothing_more(0.5)
    await writer.disconnect()
    await reader.disconnect()


# -- overlapping subscriptions: one PUBLISH per message ------------------------------------------


async def _per_topic(client: Paho, topics: list[str]) -> dict[str, list]:
    """Messages received per topic until each topic's ``end`` marker (same topic, same Kafka
    partition, so the marker comes after every copy of the message before it)."""
    got: dict[str, list] = {topic: [] for topic in topics}
    ended: set[str] = set()
    while ended != set(topics):
        message = await client.get()
        if message.payload == b"end":
            ended.add(message.topic)
        else:
            got[message.topic].append(message)
    return got


async def test_overlapping_mqtt5_subscriptions_get_one_publish_with_every_identifier(port):
    base = f"{PREFIX}/ov5"
    sub = Paho(port, unique("o"))
    await sub.connect()
    assert await sub.subscribe(f"{base}/#", qos=0, identifier=1) == [0]
    assert await sub.subscribe(f"{base}/+/x", qos=1, identifier=2) == [1]
    assert await sub.subscribe(f"{base}/a/x", qos=2, identifier=3) == [2]
    pub = Paho(port, unique("p"))
    await pub.connect()
    topics = [f"{base}/a/x", f"{base}/b/x", f"{base}/c"]
    for topic in topics:
        await pub.publish(topic, "m", qos=2)
        await pub.publish(topic, "end", qos=2)  # paho hands a QoS 2 message over at PUBREL
    got = await _per_topic(sub, topics)
    expected = {  # topic -> (QoS: the highest granted of the matching ones, identifiers)
        f"{base}/a/x": (2, [1, 2, 3]),
        f"{base}/b/x": (1, [1, 2]),
        f"{base}/c": (0, [1]),
    }
    for topic, (qos, identifiers) in expected.items():
        assert len(got[topic]) == 1, (topic, got[topic])  # one PUBLISH, not one per match
        message = got[topic][0]
        assert message.qos == qos
        assert sorted(message.properties.SubscriptionIdentifier) == identifiers
    await pub.disconnect()
    await sub.disconnect()


async def test_overlapping_mqtt311_subscriptions_get_one_publish_at_the_highest_qos(port):
    base = f"{PREFIX}/ov3"
    sub = Paho(port, unique("o"), version=4)
    await sub.connect(keepalive=MAX_KEEP_ALIVE)  # more would be refused by this bridge
    assert await sub.subscribe(f"{base}/#", qos=0) == [0]
    assert await sub.subscribe(f"{base}/+/x", qos=1) == [1]
    pub = Paho(port, unique("p"))
    await pub.connect()
    topics = [f"{base}/a/x", f"{base}/c"]
    for topic in topics:
        await pub.publish(topic, "m", qos=1)
        await pub.publish(topic, "end", qos=1)
    got = await _per_topic(sub, topics)
    assert [m.qos for m in got[f"{base}/a/x"]] == [1]
    assert [m.qos for m in got[f"{base}/c"]] == [0]
    await pub.disconnect()
    await sub.disconnect()
