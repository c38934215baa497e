"""Outbound topic aliases (MQTT 5): the bridge sets an alias with a topic's first PUBLISH, then
sends the alias alone, never more aliases than the client allowed; checked byte by byte with a
hand-built client, and end to end with paho-mqtt.

(Debian's mosquitto_sub 2.0.11 is not used: asked to announce a Topic Alias Maximum with
``-D connect topic-alias-maximum N``, its libmosquitto still refuses a PUBLISH with an empty
topic name as a protocol error; newer libmosquitto resolves aliases.)"""

from __future__ import annotations

import asyncio
import struct

from mqtt_support import TIMEOUT, mqtt_port, unique
from raw_mqtt import _open, mqtt_connect, mqtt_subscribe, read_packet

# One Kafka key for every topic: one partition, so deliveries keep the publish order.
ROUTES = """
[[routes]]
name = "aliased"
topic = "{prefix}-aliased"
key = "one"
headers = {{ rest = "{{rest}}" }}

[routes.mqtt]
topic = "{prefix}/{{rest...}}"
"""


def publish_fields(packet: bytes) -> tuple[str, int | None, bytes]:
    """(topic name, Topic Alias, payload) of a QoS 0 MQTT 5 PUBLISH, parsed by hand."""
    assert packet[0] & 0xF0 == 0x30 and not packet[0] & 0x06, packet[:1].hex()
    (topic_len,) = struct.unpack_from(">H", packet, 1)
    topic = packet[3 : 3 + topic_len].decode()
    pos = 3 + topic_len
    props_len = packet[pos]  # < 128 here: one byte
    props = packet[pos + 1 : pos + 1 + props_len]
    alias = None
    if props[:1] == b"\x23":  # the bridge puts the alias first
        (alias,) = struct.unpack_from(">H", props, 1)
    return topic, alias, packet[pos + 1 + props_len :]


async def test_a_raw_client_gets_the_alias_alone_after_the_first_publish_of_a_topic(
    mqtt_bridge, paho
):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(ROUTES.format(prefix=prefix)))
    reader, writer = await _open(port)
    writer.write(mqtt_connect(unique("raw"), topic_alias_maximum=2))
    assert (await read_packet(reader))[0] == 0x20  # CONNACK
    writer.write(mqtt_subscribe(f"{prefix}/#"))
    assert (await read_packet(reader))[0] == 0x90  # SUBACK
    publisher = paho(port)
    await publisher.connect()
    sent = ["a/long/topic/name", "a/long/topic/name", "b", "c", "b", "a/long/topic/name"]
    for n, topic in enumerate(sent):
        assert await publisher.publish(f"{prefix}/{topic}", str(n), qos=1) == 0
    async with asyncio.timeout(TIMEOUT):
        got = [publish_fields(await read_packet(reader)) for _ in sent]
    writer.close()
    a, b, c = (f"{prefix}/{t}" for t in ("a/long/topic/name", "b", "c"))
    assert got == [
        (a, 1, b"0"),  # the topic's first PUBLISH sets the alias
        ("", 1, b"1"),  # then the alias alone: an empty topic name
        (b, 2, b"2"),
        (c, 1, b"3"),  # the client allows 2: the least recently used (a) gives its alias up
        ("", 2, b"4"),
        (a, 1, b"5"),  # a needs an alias again: c's, with the topic name
    ]


async def test_paho_mqtt5_gets_every_message_under_the_right_topic(mqtt_bridge, paho):
    """paho-mqtt 2.2 hands an aliased message to the application as it came: topic "" and
    properties.TopicAlias; resolving that as paho's docs tell applications to gives back the
    topic each message was published to."""
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(ROUTES.format(prefix=prefix)))
    sub = paho(port)
    await sub.connect(TopicAliasMaximum=2)
    await sub.subscribe(f"{prefix}/#", qos=1)
    publisher = paho(port)
    await publisher.connect()
    sent = [f"{prefix}/{t}" for t in ("x/1", "x/1", "x/2", "x/3", "x/1", "x/2", "x/2")]
    for n, topic in enumerate(sent):
        assert await publisher.publish(topic, str(n), qos=1) == 0
    aliases: dict[int, str] = {}
    received = []
    for message in await sub.get_many(len(sent)):
        alias = getattr(message.properties, "TopicAlias", None)
        assert alias is not None and 1 <= alias <= 2
        if message.topic:
            aliases[alias] = message.topic
        received.append((aliases[alias], message.payload.decode()))
    assert received == [(topic, str(n)) for n, topic in enumerate(sent)]


async def test_aliases_off_sends_the_topic_name_every_time(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(ROUTES.format(prefix=prefix), outbound_topic_aliases=0))
    reader, writer = await _open(port)
    writer.write(mqtt_connect(unique("raw"), topic_alias_maximum=10))
    await read_packet(reader)
    writer.write(mqtt_subscribe(f"{prefix}/#"))
    await read_packet(reader)
    publisher = paho(port)
    await publisher.connect()
    for n in range(2):
        assert await publisher.publish(f"{prefix}/t", str(n), qos=1) == 0
    async with asyncio.timeout(TIMEOUT):
        got = [publish_fields(await read_packet(reader)) for _ in range(2)]
    writer.close()
    assert got == [(f"{prefix}/t", None, b"0"), (f"{prefix}/t", None, b"1")]
