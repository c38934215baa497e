"""A topic deleted and created again under a running bridge (issue 15, items 1-3 for MQTT): a
live MQTT 5 subscriber, a shared-group member and a persistent session that was away each get
every record of the new incarnation, none skipped and none twice, and the first of them carries
the user property ``edgebridge-reset: reset``. Real broker, real bridge, paho-mqtt."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from mqtt_support import Paho, mqtt_port, reset_property, unique

from bridge.process.runtime import Bridge

pytestmark = pytest.mark.broker


async def recreate(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


async def new_epoch(bridge: Bridge, topic: str, old: int) -> None:
    """Until the hub has noticed the new incarnation (it checks every 2 s)."""
    _, hub = bridge.kafka
    for _ in range(200):
        feed = hub.feeds().get(topic)
        if feed is not None and feed.epoch and feed.epoch != old:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the hub never noticed the recreated topic")


def readings_route(topic: str, prefix: str) -> str:
    return f"""
[[routes]]
name = "readings"
topic = "{topic}"
key = "{{sensor}}"

[routes.mqtt]
topic = "{prefix}/r/{{sensor...}}"
"""


async def until_end(client: Paho) -> list[tuple[bytes, str | None]]:
    got: list[tuple[bytes, str | None]] = []
    while not got or got[-1][0] != b"end":
        message = await client.get()
        got.append((message.payload, reset_property(message)))
    return got


async def test_recreated_topic_live_subscriber_and_returning_session_are_told(
    mqtt_bridge, new_topic, kafka_bootstrap
):
    prefix = unique()
    topic = await new_topic()
    routes = readings_route(topic, prefix)
    bridge = await mqtt_bridge(routes, http=False)
    port = mqtt_port(bridge)
    live = Paho(port, unique("live"))
    await live.connect()
    assert await live.subscribe(f"{prefix}/r/#", qos=1) == [1]
    # overlapping: one PUBLISH per record, and the offsets it remembers as sent are of the old
    # incarnation (the new one starts at 0 again)
    assert await live.subscribe(f"{prefix}/r/+", qos=1) == [1]
    shared = Paho(port, unique("grp"))  # the only member of its shared group
    await shared.connect()
    assert await shared.subscribe(f"$share/g/{prefix}/r/#", qos=1) == [1]
    away_id = unique("away")
    away = Paho(port, away_id, clean=False)
    await away.connect(session_expiry=300)
    assert await away.subscribe(f"{prefix}/r/#", qos=1) == [1]
    pub = Paho(port, unique("pub"))
    await pub.connect()
    for payload in ("a1", "a2"):
        await pub.publish(f"{prefix}/r/s1", payload, qos=1)
    assert [m.payload for m in await live.get_many(2)] == [b"a1", b"a2"]
    assert [m.payload for m in await away.get_many(2)] == [b"a1", b"a2"]
    assert [m.payload for m in await shared.get_many(2)] == [b"a1", b"a2"]
    await away.disconnect()  # its session keeps offset 2 of the old incarnation

    _, hub = bridge.kafka
    old_epoch = hub.feeds()[topic].epoch
    assert old_epoch  # Tansu gives topic ids
    await recreate(kafka_bootstrap, topic)
    await new_epoch(bridge, topic, old_epoch)
    for payload in ("b1", "b2", "b3", "b4", "end"):
        await pub.publish(f"{prefix}/r/s1", payload, qos=1)

    expected = [(b"b1", "reset"), (b"b2", None), (b"b3", None), (b"b4", None), (b"end", None)]
    assert await until_end(live) == expected
    assert await until_end(shared) == expected
    # The session's saved offset 2 means nothing in the new topic: resuming there would
    # silently skip b1 and b2. It reads the new incarnation from its start and is told.
    back = Paho(port, away_id, clean=False)
    present, code, _ = await back.connect(session_expiry=300)
    assert (present, code) == (True, 0)
    assert await until_end(back) == expected
    await back.disconnect()
    await pub.disconnect()
    await live.disconnect()
    await shared.disconnect()


async def test_a_deleted_topic_comes_back_to_its_live_subscriber_with_a_reset(
    mqtt_bridge, new_topic, kafka_bootstrap
):
    prefix = unique()
    topic = await new_topic()
    routes = readings_route(topic, prefix)
    bridge = await mqtt_bridge(routes, http=False)
    port = mqtt_port(bridge)
    live = Paho(port, unique("live"))
    await live.connect()
    assert await live.subscribe(f"{prefix}/r/#", qos=1) == [1]
    pub = Paho(port, unique("pub"))
    await pub.connect()
    await pub.publish(f"{prefix}/r/s1", "a1", qos=1)
    assert (await live.get()).payload == b"a1"
    _, hub = bridge.kafka
    old_epoch = hub.feeds()[topic].epoch
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        for _ in range(200):  # the hub notices (every 2 s) and ends the feed
            if topic not in hub.feeds():
                break
            await asyncio.sleep(0.05)
        assert topic not in hub.feeds()
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    await new_epoch(bridge, topic, old_epoch)  # the subscription looked for it and is back
    for payload in ("c1", "end"):
        await pub.publish(f"{prefix}/r/s1", payload, qos=1)
    # still connected all along; the topic's new records from its start, the first one told
    assert await until_end(live) == [(b"c1", "reset"), (b"end", None)]
    await pub.disconnect()
    await live.disconnect()


async def test_packet_ids_of_redeliveries_of_an_old_incarnation_are_freed(
    mqtt_bridge, new_topic, kafka_bootstrap
):
    """A session saved with unacknowledged QoS 1 deliveries keeps their packet ids for the
    redeliveries. When its topic was recreated meanwhile those redeliveries never come (the
    offsets are of the old incarnation): the ids must not stay reserved for the connection."""
    prefix = unique()
    topic = await new_topic()
    bridge = await mqtt_bridge(readings_route(topic, prefix), http=False, session_flush_s=0.1)
    port = mqtt_port(bridge)
    phone_id = unique("phone")
    phone = Paho(port, phone_id, clean=False, manual_ack=True)
    await phone.connect(session_expiry=300)
    assert await phone.subscribe(f"{prefix}/r/#", qos=1) == [1]
    pub = Paho(port, unique("pub"))
    await pub.connect()
    for payload in ("a1", "a2", "a3"):
        await pub.publish(f"{prefix}/r/s1", payload, qos=1)
    assert [m.payload for m in await phone.get_many(3)] == [b"a1", b"a2", b"a3"]
    await asyncio.sleep(0.5)  # none acknowledged; the session (with its in-flight ids) saved
    await phone.drop()
    _, hub = bridge.kafka
    old_epoch = hub.feeds()[topic].epoch
    await recreate(kafka_bootstrap, topic)
    await new_epoch(bridge, topic, old_epoch)

    back = Paho(port, phone_id, clean=False)
    present, code, _ = await back.connect(session_expiry=300)
    assert (present, code) == (True, 0)
    await pub.publish(f"{prefix}/r/s1", "b1", qos=1)
    message = await back.get()
    assert (message.payload, reset_property(message), message.dup) == (b"b1", "reset", False)
    client = bridge.frontend("mqtt").clients[phone_id]
    assert not client.conn.reserved_ids, list(client.conn.reserved_ids)
    await back.nothing_more(0.3)  # and nothing of the old incarnation resent
    await back.disconnect()
    await pub.disconnect()
