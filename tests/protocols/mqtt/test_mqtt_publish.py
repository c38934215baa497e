"""PUBLISH into Kafka through the MQTT front-end, with real paho clients and the real broker."""

from __future__ import annotations

from mqtt_support import catch_all_routes, mqtt_port, unique


async def test_qos1_publish_lands_in_kafka_with_mqtt_headers(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix))
    client = paho(mqtt_port(bridge), "scoreboard-1")
    await client.connect()
    code = await client.publish(
        f"{prefix}/stadium/m7/score",
        b'{"home":1}',
        qos=1,
        ContentType="application/json",
        ResponseTopic="replies/x",
        CorrelationData=b"\x01\x02",
        UserProperty=[("source", "board")],
    )
    assert code == 0  # PUBACK success: only sent after Kafka acknowledged
    [record] = await kafka_records(f"{prefix}-scores", 1)
    headers = dict(record.headers)
    assert record.key == b"m7" and record.value == b'{"home":1}'
    assert headers["mqtt-topic"] == f"{prefix}/stadium/m7/score".encode()
    assert headers["mqtt-qos"] == b"1"
    assert headers["mqtt-client"] == b"scoreboard-1"
    assert headers["content-type"] == b"application/json"
    assert headers["mqtt-response-topic"] == b"replies/x"
    assert headers["mqtt-correlation-data"] == b"\x01\x02"
    assert headers["source"] == b"board"


async def test_catch_all_route_keys_by_topic_and_specific_route_wins(
    mqtt_bridge, paho, kafka_records
):
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix))
    client = paho(mqtt_port(bridge))
    await client.connect()
    assert await client.publish(f"{prefix}/lights/hall/3", b"on", qos=1) == 0
    assert await client.publish(f"{prefix}/stadium/m1/score", b"2-1", qos=1) == 0
    [anything] = await kafka_records(f"{prefix}-any", 1)
    assert anything.key == b"lights/hall/3" and anything.value == b"on"
    [score] = await kafka_records(f"{prefix}-scores", 1)
    assert score.key == b"m1"
    # the specific route's record never shows up in the catch-all topic
    assert len(await kafka_records(f"{prefix}-any", 2, timeout=1.0)) == 1


async def test_qos2_publish_is_produced_once_and_completes(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix))
    client = paho(mqtt_port(bridge))
    await client.connect()
    for n in range(5):
        assert await client.publish(f"{prefix}/q2/{n}", f"v{n}", qos=2) == 0  # PUBCOMP seen
    found = await kafka_records(f"{prefix}-any", 6, timeout=2.0)
    assert sorted(r.value for r in found) == [b"v0", b"v1", b"v2", b"v3", b"v4"]


async def test_qos0_publishes_keep_their_order(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix))
    client = paho(mqtt_port(bridge))
    await client.connect()
    for n in range(200):
        await client.publish(f"{prefix}/seq", str(n), qos=0)
    found = await kafka_records(f"{prefix}-any", 200)
    assert [int(r.value) for r in found] == list(range(200))


async def test_publish_without_route_gets_0x90_on_mqtt5(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    bridge = await mqtt_bridge(
        f"""
[[routes]]
name = "only"
topic = "{prefix}-only"
[routes.mqtt]
topic = "{prefix}/only"
"""
    )
    client = paho(mqtt_port(bridge))
    await client.connect()
    assert await client.publish(f"{prefix}/elsewhere", b"x", qos=1) == 0x90
    assert await client.publish(f"{prefix}/only", b"y", qos=1) == 0  # the connection lives on
    [record] = await kafka_records(f"{prefix}-only", 1)
    assert record.value == b"y"


async def test_publish_denied_by_access_gets_0x87_and_produces_nothing(
    mqtt_bridge, paho, kafka_records
):
    prefix = unique()
    bridge = await mqtt_bridge(
        f"""
[[routes]]
name = "locked"
topic = "{prefix}-locked"
key = "{{id}}"
[routes.mqtt]
topic = "{prefix}/locked/{{id}}"
[routes.access]
publish = ["scoreboard"]
"""
    )
    client = paho(mqtt_port(bridge))
    await client.connect()
    assert await client.publish(f"{prefix}/locked/1", b"x", qos=1) == 0x87
    assert await kafka_records(f"{prefix}-locked", 1, timeout=1.0) == []


async def test_schema_invalid_payload_gets_0x99(mqtt_bridge, paho, kafka_records, tmp_path):
    prefix = unique()
    schema = tmp_path / "score.json"
    schema.write_text(
        '{"type":"object","required":["home"],"properties":{"home":{"type":"integer"}}}'
    )
    bridge = await mqtt_bridge(
        f"""
[[routes]]
name = "checked"
topic = "{prefix}-checked"
schema = "{schema}"
[routes.mqtt]
topic = "{prefix}/checked"
"""
    )
    client = paho(mqtt_port(bridge))
    await client.connect()
    assert await client.publish(f"{prefix}/checked", b'{"home":"one"}', qos=1) == 0x99
    assert await client.publish(f"{prefix}/checked", b'{"home":1}', qos=1) == 0
    [record] = await kafka_records(f"{prefix}-checked", 1)
    assert record.value == b'{"home":1}'


async def test_non_finite_numbers_and_duplicate_members_get_0x99_and_produce_nothing(
    mqtt_bridge, paho, kafka_records, tmp_path
):
    """A score or an odds value of NaN passes every JSON Schema bound (NaN compares false), so
    it must be refused as not-JSON before the schema is consulted; on a route without a schema
    too, when the publisher says the payload is JSON."""
    prefix = unique()
    schema = tmp_path / "odds.json"
    schema.write_text('{"type":"object","properties":{"home":{"type":"number","minimum":1}}}')
    bridge = await mqtt_bridge(
        f"""
[[routes]]
name = "odds"
topic = "{prefix}-odds"
schema = "{schema}"
[routes.mqtt]
topic = "{prefix}/odds"

[[routes]]
name = "loose"
topic = "{prefix}-loose"
[routes.mqtt]
topic = "{prefix}/loose"
"""
    )
    client = paho(mqtt_port(bridge))
    await client.connect()
    for bad in (
        b'{"home":NaN}',
        b'{"home":Infinity}',
        b'{"home":-Infinity}',
        b'{"home":1e999}',
        b'{"home":2,"home":0.5}',
    ):
        assert await client.publish(f"{prefix}/odds", bad, qos=1) == 0x99, bad
    json_type = {"ContentType": "application/json"}
    assert await client.publish(f"{prefix}/loose", b'{"home":NaN}', qos=1, **json_type) == 0x99
    assert await client.publish(f"{prefix}/loose", b"NaN", qos=1) == 0  # opaque: not said JSON
    assert await client.publish(f"{prefix}/odds", b'{"home":2.5}', qos=1) == 0
    [record] = await kafka_records(f"{prefix}-odds", 1)
    assert record.value == b'{"home":2.5}'
    assert len(await kafka_records(f"{prefix}-odds", 2, timeout=1.0)) == 1
    assert [r.value for r in await kafka_records(f"{prefix}-loose", 2, timeout=1.0)] == [b"NaN"]


async def test_mqtt311_publish_without_route_closes_the_connection(
    mqtt_bridge, paho, kafka_records
):
    """MQTT 3.1.1 has no negative PUBACK: the documented behaviour is closing the connection."""
    prefix = unique()
    bridge = await mqtt_bridge(
        f"""
[[routes]]
name = "only"
topic = "{prefix}-only"
[routes.mqtt]
topic = "{prefix}/only"
"""
    )
    client = paho(mqtt_port(bridge), version=4)
    await client.connect()
    client.client.publish(f"{prefix}/elsewhere", b"x", qos=1)
    await client.wait_disconnected()
    other = paho(mqtt_port(bridge), version=4)
    await other.connect()
    assert await other.publish(f"{prefix}/only", b"fine", qos=1) == 0


async def test_inbound_topic_alias_is_resolved(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix))
    client = paho(mqtt_port(bridge))
    await client.connect()
    assert await client.publish(f"{prefix}/aliased", b"first", qos=1, TopicAlias=3) == 0
    assert await client.publish("", b"second", qos=1, TopicAlias=3) == 0
    found = await kafka_records(f"{prefix}-any", 2)
    assert [(r.key, r.value) for r in found] == [(b"aliased", b"first"), (b"aliased", b"second")]


async def test_a_burst_followed_by_a_hang_up_is_produced_entirely(mqtt_bridge, kafka_records):
    """Publishes the bridge received before the peer closed the socket are not dropped."""
    import asyncio

    from protocols.mqtt.wire.codec import Decoder, encode
    from protocols.mqtt.wire.packets import Connect, Publish

    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Connect(protocol_level=4, client_id=unique("burst")), 4))
    Decoder(version=4, server=False).feed(await reader.read(16))  # CONNACK
    writer.write(
        b"".join(encode(Publish(f"{prefix}/burst", str(n).encode()), 4) for n in range(3000))
    )
    await writer.drain()
    writer.close()  # no DISCONNECT: the phone just goes away
    found = await kafka_records(f"{prefix}-any", 3000)
    assert [int(r.value) for r in found] == list(range(3000))


async def test_qos0_linger_keeps_every_record_in_order(mqtt_bridge, kafka_records):
    """With qos0_linger_ms the QoS 0 records wait for company in their batch: same records,
    same order (one producer per (acks, linger) pair), while QoS 1 still never lingers."""
    import asyncio

    from protocols.mqtt.wire.codec import Decoder, encode
    from protocols.mqtt.wire.packets import Connect, Puback, Publish

    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix), qos0_linger_ms=20)
    port = mqtt_port(bridge)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = Decoder(version=4, server=False)
    writer.write(encode(Connect(protocol_level=4, client_id=unique("linger")), 4))
    decoder.feed(await reader.read(16))  # CONNACK
    writer.write(b"".join(encode(Publish(f"{prefix}/l", str(n).encode()), 4) for n in range(500)))
    writer.write(encode(Publish(f"{prefix}/l", b"q1", qos=1, packet_id=1), 4))
    async with asyncio.timeout(15):
        assert decoder.feed(await reader.read(16)) == [Puback(1)]
    found = await kafka_records(f"{prefix}-any", 501)
    values = [r.value for r in found]
    assert b"q1" in values  # QoS 1 is on its own producer: anywhere relative to the QoS 0 ones
    assert [v for v in values if v != b"q1"] == [str(n).encode() for n in range(500)]
    assert ("1", 20) in bridge.producer._producers  # the QoS 0 records did go through a linger
    writer.close()


async def test_later_publishes_of_a_topic_make_the_same_records_as_the_first(
    mqtt_bridge, paho, kafka_records, tmp_path
):
    """A connection remembers what the first publish of a topic worked out (route, key,
    headers): records of later publishes must be exactly what ``build_message`` makes, audit
    headers included (their time moves); a key taken from the payload is never remembered."""
    prefix = unique()
    schema = tmp_path / "score.json"
    schema.write_text('{"type":"object","required":["id"]}')
    bridge = await mqtt_bridge(
        f"""
[[routes]]
name = "shaped"
topic = "{prefix}-shaped"
key = "{{match}}-{{$client_id}}"
headers = {{ venue = "{{match}}", by = "{{$client_id}}" }}
content_type = "application/json"
[routes.mqtt]
topic = "{prefix}/m/{{match}}"

[[routes]]
name = "by-body"
topic = "{prefix}-body"
key = "{{$body.id}}"
schema = "{schema}"
[routes.mqtt]
topic = "{prefix}/b"
"""
    )
    client = paho(mqtt_port(bridge), client_id=unique("pub"))
    await client.connect()
    for n in range(3):
        assert await client.publish(f"{prefix}/m/7", f"v{n}", qos=1, retain=False) == 0
    assert await client.publish(f"{prefix}/m/7", "v3", qos=1, UserProperty=[("k", "v")]) == 0
    for n in range(3):
        assert await client.publish(f"{prefix}/b", f'{{"id": "u{n}"}}', qos=1) == 0
    shaped = await kafka_records(f"{prefix}-shaped", 4)
    first = shaped[0]

    def without_time(headers):
        return [(k, v) for k, v in headers if k != "edgebridge-received-at"]

    assert [dict(r.headers)["edgebridge-received-at"] is not None for r in shaped] == [True] * 4
    for record in shaped[1:3]:
        assert record.key == first.key
        assert without_time(record.headers) == without_time(first.headers)
    assert (
        without_time(shaped[3].headers)
        == [
            *without_time(first.headers)[:6],
            ("k", b"v"),  # the user property: after the MQTT headers, before the audit ones
            *without_time(first.headers)[6:],
        ]
    )
    assert [r.key for r in await kafka_records(f"{prefix}-body", 3)] == [b"u0", b"u1", b"u2"]


async def test_a_retained_publish_does_not_hold_later_packets_behind_its_read_back(
    mqtt_bridge, paho, kafka_records, monkeypatch
):
    """A retained publish is answered once Kafka has both its records (route topic and retained
    table), not once this bridge has read the table back: here the read-back is held (the
    retained table's feed answers no ``wait_for`` until released), and the retained publish and
    the five publishes pipelined behind it are all acknowledged meanwhile. Once the read-back
    may go on, a new subscriber gets the retained message."""
    import asyncio

    from protocols.mqtt.wire.codec import Decoder, encode
    from protocols.mqtt.wire.packets import Connect, Puback, Publish

    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix))
    retained_topic = bridge.frontend("mqtt").options.retained_topic
    _, hub = bridge.kafka
    feed = hub.feeds()[retained_topic]
    release = asyncio.Event()
    read_back = feed.wait_for

    async def held(position, timeout=None):
        await release.wait()
        await read_back(position, timeout)

    monkeypatch.setattr(feed, "wait_for", held)
    port = mqtt_port(bridge)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = Decoder(version=5, server=False)
    writer.write(encode(Connect(protocol_level=5, client_id=unique("kept")), 5))
    decoder.feed(await reader.read(64))  # CONNACK
    topic = f"{prefix}/board/state"
    writer.write(
        encode(Publish(topic, b"kept", qos=1, retain=True, packet_id=1), 5)
        + b"".join(
            encode(Publish(f"{prefix}/after", str(n).encode(), qos=1, packet_id=2 + n), 5)
            for n in range(5)
        )
    )
    answers: list[object] = []
    async with asyncio.timeout(15):  # fails (never answered) if the read-back is waited for
        while len(answers) < 6:
            answers += decoder.feed(await reader.read(256))
    assert answers == [Puback(n) for n in range(1, 7)]
    assert not release.is_set()
    stored = [
        r
        for r in await kafka_records(retained_topic, 10_000, timeout=2.0)
        if r.key == topic.encode()
    ]
    assert [r.value for r in stored] == [b"kept"]
    release.set()
    subscriber = paho(port)
    await subscriber.connect()
    await subscriber.subscribe(f"{prefix}/board/#", qos=1)
    message = await subscriber.get()
    assert (message.topic, message.payload, message.retain) == (topic, b"kept", True)
    writer.close()
