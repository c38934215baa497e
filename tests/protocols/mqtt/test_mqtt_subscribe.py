"""SUBSCRIBE through the hub: filters, QoS, MQTT 5 options, retained, shared subscriptions."""

from __future__ import annotations

import asyncio

from mqtt_support import catch_all_routes, mqtt_port, unique


async def started(mqtt_bridge, paho, prefix, **options):
    bridge = await mqtt_bridge(catch_all_routes(prefix), **options)
    return bridge, mqtt_port(bridge)


async def test_wildcards_and_delivered_qos_is_the_minimum(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    sub = paho(port)
    await sub.connect()
    assert await sub.subscribe(f"{prefix}/stadium/+/score", qos=1) == [1]
    assert await sub.subscribe(f"{prefix}/lights/#", qos=0) == [0]
    pub = paho(port)
    await pub.connect()
    await pub.publish(f"{prefix}/stadium/m1/score", "1-0", qos=2)
    await pub.publish(f"{prefix}/lights/hall/3", "on", qos=1)
    await pub.publish(f"{prefix}/stadium/m1/corners", "4", qos=1)  # matches no filter
    await pub.publish(f"{prefix}/stadium/m2/score", "0-0", qos=0)
    got = {m.topic: (m.payload, m.qos) for m in await sub.get_many(3)}
    assert got == {
        f"{prefix}/stadium/m1/score": (b"1-0", 1),  # published 2, granted 1
        f"{prefix}/lights/hall/3": (b"on", 0),  # published 1, granted 0
        f"{prefix}/stadium/m2/score": (b"0-0", 0),  # published 0
    }
    await sub.nothing_more(0.5)


async def test_mqtt5_properties_reach_the_subscriber(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    sub = paho(port)
    await sub.connect()
    await sub.subscribe(f"{prefix}/props/#", qos=1, identifier=42)
    pub = paho(port)
    await pub.connect()
    await pub.publish(
        f"{prefix}/props/a",
        "x",
        qos=1,
        ContentType="text/plain",
        ResponseTopic="r/1",
        CorrelationData=b"id-7",
        UserProperty=[("k", "v")],
        PayloadFormatIndicator=1,
    )
    message = await sub.get()
    props = message.properties
    assert props.ContentType == "text/plain"
    assert props.ResponseTopic == "r/1"
    assert props.CorrelationData == b"id-7"
    assert props.UserProperty == [("k", "v")]  # audit headers are not shown to subscribers
    assert props.SubscriptionIdentifier == [42]
    assert props.PayloadFormatIndicator == 1


async def test_no_local_skips_own_messages(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    me = paho(port)
    await me.connect()
    await me.subscribe(f"{prefix}/chat", qos=1, noLocal=True)
    other = paho(port)
    await other.connect()
    await me.publish(f"{prefix}/chat", "mine", qos=1)
    await other.publish(f"{prefix}/chat", "theirs", qos=1)
    assert (await me.get()).payload == b"theirs"
    await me.nothing_more(0.5)


async def test_message_expiry_drops_stale_messages_for_resumed_sessions(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix, session_flush_s=0.1)
    sub = paho(port, "expiring-sub")
    await sub.connect(session_expiry=300)
    await sub.subscribe(f"{prefix}/exp", qos=1)
    await sub.disconnect()
    pub = paho(port)
    await pub.connect()
    await pub.publish(f"{prefix}/exp", "short", qos=1, MessageExpiryInterval=1)
    await pub.publish(f"{prefix}/exp", "long", qos=1, MessageExpiryInterval=600)
    await asyncio.sleep(2.2)
    back = paho(port, "expiring-sub", clean=False)
    present, _, _ = await back.connect(session_expiry=300)
    assert present
    message = await back.get()
    assert message.payload == b"long"
    assert 590 <= message.properties.MessageExpiryInterval <= 600  # what is left of it
    await back.nothing_more(0.5)


async def test_receive_maximum_holds_back_deliveries_until_acknowledged(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    sub = paho(port, manual_ack=True)
    await sub.connect(ReceiveMaximum=2)
    await sub.subscribe(f"{prefix}/flow", qos=1)
    pub = paho(port)
    await pub.connect()
    for n in range(5):
        await pub.publish(f"{prefix}/flow", str(n), qos=1)
    first = await sub.get_many(2)
    assert [m.payload for m in first] == [b"0", b"1"]
    await sub.nothing_more(0.7)  # two in flight: the bridge waits
    for message in first:
        sub.client.ack(message.mid, message.qos)
    rest = await sub.get_many(2)
    assert [m.payload for m in rest] == [b"2", b"3"]
    for message in rest:
        sub.client.ack(message.mid, message.qos)
    assert (await sub.get()).payload == b"4"


async def test_maximum_packet_size_of_the_client_is_respected(mqtt_bridge, paho):
    prefix = unique()
    bridge, port = await started(mqtt_bridge, paho, prefix, session_flush_s=0.1)
    sub = paho(port, "small-sub")
    await sub.connect(session_expiry=600, MaximumPacketSize=200)
    await sub.subscribe(f"{prefix}/size", qos=1)
    pub = paho(port)
    await pub.connect()
    await pub.publish(f"{prefix}/size", b"x" * 1000, qos=1)
    await pub.publish(f"{prefix}/size", b"small", qos=1)
    assert (await sub.get()).payload == b"small"  # the big one was never sent to it
    await asyncio.sleep(0.5)  # the PUBACK reaches the bridge
    await sub.disconnect()
    # the skipped message counts as delivered: the saved position moves past both
    stored = bridge.frontend("mqtt").sessions.load("small-sub")
    [subscription] = stored.subscriptions.values()
    assert subscription.positions[f"{prefix}-any"] == {0: 2} and not subscription.acked
    back = paho(port, "small-sub", clean=False)
    present, _, _ = await back.connect(session_expiry=600, MaximumPacketSize=200)
    assert present
    await back.nothing_more(1.0)


async def test_retained_messages_first_then_live_and_empty_payload_clears(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    pub = paho(port)
    await pub.connect()
    await pub.publish(f"{prefix}/stadium/m1/score", "2-1", qos=1, retain=True)
    await pub.publish(f"{prefix}/stadium/m2/score", "0-0", qos=1, retain=True)
    sub = paho(port)
    await sub.connect()
    await sub.subscribe(f"{prefix}/stadium/+/score", qos=1)
    retained = {m.topic: (m.payload, m.retain) for m in await sub.get_many(2)}
    assert retained == {
        f"{prefix}/stadium/m1/score": (b"2-1", True),
        f"{prefix}/stadium/m2/score": (b"0-0", True),
    }
    await pub.publish(f"{prefix}/stadium/m1/score", "3-1", qos=1)
    live = await sub.get()
    assert (live.payload, live.retain) == (b"3-1", False)
    await pub.publish(f"{prefix}/stadium/m2/score", b"", qos=1, retain=True)  # clears
    await sub.get()  # the empty message itself is still delivered to current subscribers
    later = paho(port)
    await later.connect()
    await later.subscribe(f"{prefix}/stadium/+/score", qos=1)
    only = await later.get()
    assert (only.topic, only.payload) == (f"{prefix}/stadium/m1/score", b"2-1")
    await later.nothing_more(0.5)


async def test_retain_handling_2_and_retain_as_published(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    pub = paho(port)
    await pub.connect()
    await pub.publish(f"{prefix}/rh/a", "old", qos=1, retain=True)
    sub = paho(port)
    await sub.connect()
    await sub.subscribe(f"{prefix}/rh/#", qos=1, retainHandling=2, retainAsPublished=True)
    await pub.publish(f"{prefix}/rh/a", "new", qos=1, retain=True)
    message = await sub.get()
    assert (message.payload, message.retain) == (b"new", True)  # no "old"; flag as published


async def test_subscribe_to_a_filter_no_route_serves_is_refused(mqtt_bridge, paho):
    prefix = unique()
    bridge = await mqtt_bridge(
        f"""
[[routes]]
name = "only"
topic = "{prefix}-only"
[routes.mqtt]
topic = "{prefix}/only"

[[routes]]
name = "private"
topic = "{prefix}-private"
[routes.mqtt]
topic = "{prefix}/private"
[routes.access]
subscribe = ["admin"]
"""
    )
    sub = paho(mqtt_port(bridge))
    await sub.connect()
    assert await sub.subscribe(f"{prefix}/nowhere/#", qos=1) == [0x8F]
    assert await sub.subscribe(f"{prefix}/private", qos=1) == [0x87]
    assert await sub.subscribe(f"{prefix}/only", qos=1) == [1]


async def test_shared_subscription_spreads_messages_over_members(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    members = [paho(port) for _ in range(3)]
    for member in members:
        await member.connect()
        assert await member.subscribe(f"$share/workers/{prefix}/jobs/+", qos=1) == [1]
    watcher = paho(port)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/jobs/+", qos=1)
    pub = paho(port)
    await pub.connect()
    for n in range(30):
        await pub.publish(f"{prefix}/jobs/{n}", str(n), qos=1)
    assert len(await watcher.get_many(30)) == 30  # a normal subscription sees everything
    await asyncio.sleep(0.5)
    counts = [member.messages.qsize() for member in members]
    received = sorted(int(m.payload) for member in members for m in list(member.messages.queue))
    assert received == list(range(30))  # each message to exactly one member of the group
    assert all(count >= 5 for count in counts), counts  # and spread over all of them


async def test_mqtt311_subscriber_gets_mqtt5_publishes(mqtt_bridge, paho):
    prefix = unique()
    _, port = await started(mqtt_bridge, paho, prefix)
    sub = paho(port, version=4)
    await sub.connect()
    assert await sub.subscribe(f"{prefix}/mix", qos=2) == [2]
    pub = paho(port)
    await pub.connect()
    await pub.publish(f"{prefix}/mix", "hello", qos=2, UserProperty=[("a", "b")])
    message = await sub.get()
    assert (message.payload, message.qos) == (b"hello", 2)
