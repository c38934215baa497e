"""A route with ``after_reset = "live"`` (issue 15, items 2-3 for MQTT): after its topic is
deleted and created again, a live MQTT 5 subscriber gets only records produced after the bridge
noticed (the first with ``edgebridge-reset: reset``), so does a shared group's member, and a
persistent session that was away resumes live, not from the new start. Real broker, real
bridge, paho-mqtt."""

from __future__ import annotations

import asyncio

import pytest
from mqtt_support import Paho, mqtt_port, unique
from test_mqtt_topic_reset import new_epoch, recreate, until_end

pytestmark = pytest.mark.broker


def live_route(topic: str, prefix: str) -> str:
    return f"""
[[routes]]
name = "readings"
topic = "{topic}"
key = "{{sensor}}"
after_reset = "live"

[routes.mqtt]
topic = "{prefix}/r/{{sensor...}}"
"""


async def test_live_after_reset_for_a_live_subscriber_and_a_returning_session(
    mqtt_bridge, new_topic, kafka_bootstrap
):
    prefix = unique()
    topic = await new_topic()
    bridge = await mqtt_bridge(live_route(topic, prefix), http=False)
    port = mqtt_port(bridge)
    live = Paho(port, unique("live"))
    await live.connect()
    assert await live.subscribe(f"{prefix}/r/#", qos=1) == [1]
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
    feed = hub.feeds()[topic]
    old_epoch = feed.epoch
    checked = feed._checked_at  # the hub asks which incarnation it reads every 2 s
    for _ in range(100):
        if feed._checked_at != checked:
            break
        await asyncio.sleep(0.05)
    # right after a check: the topic recreated and x1 produced both before the next one
    await recreate(kafka_bootstrap, topic)
    await pub.publish(f"{prefix}/r/s1", "x1", qos=1)
    await new_epoch(bridge, topic, old_epoch)
    for payload in ("b1", "b2", "end"):
        await pub.publish(f"{prefix}/r/s1", payload, qos=1)
    assert await until_end(live) == [(b"b1", "reset"), (b"b2", None), (b"end", None)]
    assert await until_end(shared) == [(b"b1", "reset"), (b"b2", None), (b"end", None)]

    # The session's offset 2 is of the old incarnation: it goes on live, told with the first.
    back = Paho(port, away_id, clean=False)
    present, code, _ = await back.connect(session_expiry=300)
    assert (present, code) == (True, 0)
    await hub.feeds()[topic].sync()
    for payload in ("c1", "end"):
        await pub.publish(f"{prefix}/r/s1", payload, qos=1)
    assert await until_end(back) == [(b"c1", "reset"), (b"end", None)]
    await back.disconnect()
    await pub.disconnect()
    await live.disconnect()
    await shared.disconnect()
