"""Retention deleted records a client had not read yet: resuming below the log start is declared
(an SSE ``reset`` event with reason ``truncated``), never skipped in silence, and what is left
follows exactly once.

Tansu has no retention and no DeleteRecords, so a proxy in front of it reports a later log start
(:class:`kafka_faults.RetentionProxy`), the way a broker answers after retention ran; the bridge
reads through it as from any cluster. The bridge keeps only 2 records in its cache, so the resume
is read from Kafka.
"""

from __future__ import annotations

import httpx
import pytest
from kafka_faults import FaultyKafka, RetentionProxy
from sse_support import ODDS_ROUTE as ROUTES
from sse_support import EventStream, base_url, produce

from bridge.kafka.topic_admin import ensure_topics
from bridge.model import strict_json
from bridge.model.config import KafkaSettings, TopicSpec
from bridge.model.position import Position
from bridge.telemetry.metrics import RESUMES_TRUNCATED

pytestmark = pytest.mark.broker


async def test_resuming_below_the_log_start_is_declared_then_the_rest_follows(
    retention: tuple[FaultyKafka, RetentionProxy],
) -> None:
    kafka, proxy = retention
    topic = "truncated-odds"
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(settings, kafka.bootstrap, [TopicSpec(topic, 1, 1, False)])
    bridge = await kafka.start_bridge(
        ROUTES.format(topic=topic), ["sse"], kafka_options="cache_records = 2"
    )
    try:
        async with httpx.AsyncClient(base_url=base_url(bridge), timeout=20) as client:
            async with EventStream(client) as stream:
                await produce(bridge, topic, [f"r{i}" for i in range(10)])
                seen = await stream.until(10)
            assert [e.data for e in seen] == [f"r{i}" for i in range(10)]
            after_r2 = seen[2].id  # the client read r0..r2, then went away
            proxy.log_start[(topic, 0)] = 6  # retention deleted r0..r5 meanwhile
            before = RESUMES_TRUNCATED.labels(topic)._value.get()
            async with EventStream(client, {"Last-Event-ID": after_r2}) as resumed:
                events = await resumed.until(5)
    finally:
        await bridge.stop()
    assert [e.event for e in events] == ["reset", "odds", "odds", "odds", "odds"]
    assert strict_json.loads(events[0].data)["reason"] == "truncated"
    assert Position.decode(events[0].id, None).to_dict() == {0: 6}  # a reconnect resumes there
    assert [e.data for e in events[1:]] == ["r6", "r7", "r8", "r9"]  # r3..r5 are gone: declared
    # Records read back from Kafka carry the topic's epoch like live ones (ids stay comparable).
    epochs = {Position.decode(e.id, None).epoch for e in [seen[0], *events]}
    assert len(epochs) == 1 and 0 not in epochs, epochs
    assert RESUMES_TRUNCATED.labels(topic)._value.get() == before + 1


async def test_below_the_log_start_on_a_live_after_reset_route_is_declared_then_goes_on_live(
    retention: tuple[FaultyKafka, RetentionProxy],
) -> None:
    """``after_reset = "live"``: the truncation is declared, its id is the live end, and only
    records produced after it follow (r6..r9, still in Kafka, are not sent)."""
    kafka, proxy = retention
    topic = "truncated-odds-live"
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(settings, kafka.bootstrap, [TopicSpec(topic, 1, 1, False)])
    routes = ROUTES.format(topic=topic).replace(
        f'topic = "{topic}"', f'topic = "{topic}"\nafter_reset = "live"'
    )
    bridge = await kafka.start_bridge(routes, ["sse"], kafka_options="cache_records = 2")
    try:
        async with httpx.AsyncClient(base_url=base_url(bridge), timeout=20) as client:
            async with EventStream(client) as stream:
                await produce(bridge, topic, [f"r{i}" for i in range(10)])
                seen = await stream.until(10)
            after_r2 = seen[2].id
            proxy.log_start[(topic, 0)] = 6  # retention deleted r0..r5 meanwhile
            async with EventStream(client, {"Last-Event-ID": after_r2}) as resumed:
                await resumed.until(1)
                await produce(bridge, topic, ["r10"])
                events = await resumed.until(2)
    finally:
        await bridge.stop()
    assert [e.event for e in events] == ["reset", "odds"]
    assert strict_json.loads(events[0].data)["reason"] == "truncated"
    assert Position.decode(events[0].id, None).to_dict() == {0: 10}  # the live end
    assert events[1].data == "r10"
