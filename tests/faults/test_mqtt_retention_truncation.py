"""Retention deleted records a persistent MQTT session had not read yet: the session resumes
from the log start, and the first PUBLISH carries ``edgebridge-reset: truncated`` (MQTT 5),
never a silent skip; what is left follows exactly once.

Tansu has no retention, so the proxy of :class:`kafka_faults.RetentionProxy` reports a later log
start, as a broker does after retention ran (as in test_retention_truncation.py for SSE).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from kafka_faults import FaultyKafka, RetentionProxy

sys.path.insert(0, str(Path(__file__).parents[1] / "protocols" / "mqtt"))
from mqtt_support import Paho, mqtt_port, reset_property

from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec
from bridge.telemetry.metrics import RESUMES_TRUNCATED

pytestmark = pytest.mark.broker


async def test_a_session_resuming_below_the_log_start_is_told_then_gets_the_rest(
    retention: tuple[FaultyKafka, RetentionProxy],
) -> None:
    kafka, proxy = retention
    s = uuid.uuid4().hex[:8]
    topic = f"truncated-mqtt-{s}"
    routes = f"""
[[routes]]
name = "r-{s}"
topic = "{topic}"
key = "{{t}}"
[routes.mqtt]
topic = "tr/{s}/{{t}}"
"""
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(settings, kafka.bootstrap, [TopicSpec(topic, 1, 1, False)])
    bridge = await kafka.start_bridge(routes, ["mqtt"], kafka_options="cache_records = 2")
    port = mqtt_port(bridge)
    clients: list[Paho] = []
    try:
        away_id = f"away-{s}"
        away = Paho(port, away_id, clean=False)
        clients.append(away)
        await away.connect(session_expiry=300)
        assert await away.subscribe(f"tr/{s}/#", qos=1) == [1]
        pub = Paho(port, f"pub-{s}")
        clients.append(pub)
        await pub.connect()
        for i in range(3):
            await pub.publish(f"tr/{s}/x", f"r{i}", qos=1)
        assert [m.payload for m in await away.get_many(3)] == [b"r0", b"r1", b"r2"]
        await away.disconnect()  # its session keeps offset 3
        for i in range(3, 10):
            await pub.publish(f"tr/{s}/x", f"r{i}", qos=1)
        proxy.log_start[(topic, 0)] = 6  # retention deleted r0..r5 meanwhile
        before = RESUMES_TRUNCATED.labels(topic)._value.get()
        back = Paho(port, away_id, clean=False)
        clients.append(back)
        present, code, _ = await back.connect(session_expiry=300)
        assert (present, code) == (True, 0)
        got = [(m.payload, reset_property(m)) for m in await back.get_many(4)]
        await pub.publish(f"tr/{s}/x", "end", qos=1)
        assert (await back.get()).payload == b"end"  # and nothing twice before it
    finally:
        for client in clients:
            await client.close()
        await bridge.stop()
    # r3..r5 are gone: declared on the first delivery, never skipped in silence
    assert got == [(b"r6", "truncated"), (b"r7", None), (b"r8", None), (b"r9", None)]
    assert RESUMES_TRUNCATED.labels(topic)._value.get() == before + 1


async def test_a_session_below_the_log_start_on_a_live_after_reset_route_goes_on_live(
    retention: tuple[FaultyKafka, RetentionProxy],
) -> None:
    """``after_reset = "live"``: the same truncation is declared, but the session joins at the
    live end; records still in Kafka from before it came back (r6..r9) are not sent."""
    kafka, proxy = retention
    s = uuid.uuid4().hex[:8]
    topic = f"truncated-live-{s}"
    routes = f"""
[[routes]]
name = "r-{s}"
topic = "{topic}"
key = "{{t}}"
after_reset = "live"
[routes.mqtt]
topic = "tr/{s}/{{t}}"
"""
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(settings, kafka.bootstrap, [TopicSpec(topic, 1, 1, False)])
    bridge = await kafka.start_bridge(routes, ["mqtt"], kafka_options="cache_records = 2")
    port = mqtt_port(bridge)
    clients: list[Paho] = []
    try:
        away_id = f"away-{s}"
        away = Paho(port, away_id, clean=False)
        clients.append(away)
        await away.connect(session_expiry=300)
        assert await away.subscribe(f"tr/{s}/#", qos=1) == [1]
        pub = Paho(port, f"pub-{s}")
        clients.append(pub)
        await pub.connect()
        for i in range(3):
            await pub.publish(f"tr/{s}/x", f"r{i}", qos=1)
        assert [m.payload for m in await away.get_many(3)] == [b"r0", b"r1", b"r2"]
        await away.disconnect()  # its session keeps offset 3
        for i in range(3, 10):
            await pub.publish(f"tr/{s}/x", f"r{i}", qos=1)
        proxy.log_start[(topic, 0)] = 6  # retention deleted r0..r5 meanwhile
        before = RESUMES_TRUNCATED.labels(topic)._value.get()
        back = Paho(port, away_id, clean=False)
        clients.append(back)
        present, code, _ = await back.connect(session_expiry=300)
        assert (present, code) == (True, 0)
        for _ in range(200):  # the resume below the log start is declared (after CONNACK)
            if RESUMES_TRUNCATED.labels(topic)._value.get() > before:
                break
            await asyncio.sleep(0.02)
        await pub.publish(f"tr/{s}/x", "end", qos=1)  # after it: live
        message = await back.get()
        got = (message.payload, reset_property(message))
        await back.nothing_more(0.5)
    finally:
        for client in clients:
            await client.close()
        await bridge.stop()
    assert got == (b"end", "truncated")
