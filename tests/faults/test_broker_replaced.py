"""A memory-only broker replaced while the bridge was stopped: the topics come back empty under
the same names, with new topic ids. Old SSE ids and fetch ETags are from the old incarnation; by
the time they come back the new topic has grown past their offsets, so reading them as places in
the new topic would skip records in silence. The client is told instead (an SSE ``reset``, a fresh
fetch answer), and gets every record of the new incarnation once."""

from __future__ import annotations

import httpx
import pytest
from kafka_faults import FaultyKafka
from sse_support import EventStream, base_url, produce

from bridge.kafka.topic_admin import ensure_topics
from bridge.model import strict_json
from bridge.model.config import KafkaSettings, TopicSpec
from bridge.model.position import Position

pytestmark = pytest.mark.broker

ROUTES = """
[[routes]]
name = "odds"
topic = "odds"

[routes.sse]
path = "/odds"
event = "odds"

[[routes]]
name = "profile"
topic = "profiles"
key = "{user}"

[[routes.http]]
method = "GET"
path = "/profiles/{user}"

[[routes.http]]
method = "POST"
path = "/profiles/{user}"
idempotency = "off"
"""
TOPICS = [TopicSpec("odds", 1, 1, False), TopicSpec("profiles", 1, 1, True)]
SETTINGS = KafkaSettings(bootstrap="external", request_timeout_ms=5000)


async def _profile(client: httpx.AsyncClient, wanted: bytes, **headers: str) -> httpx.Response:
    for _ in range(200):
        response = await client.get("/profiles/ann", headers=headers)
        if response.status_code == 304 or response.content == wanted:
            return response
    raise AssertionError(f"never {wanted!r}: {response.status_code} {response.text}")


async def test_old_ids_and_etags_after_the_broker_was_replaced_under_a_stopped_bridge() -> None:
    kafka = await FaultyKafka().start()
    try:
        await ensure_topics(SETTINGS, kafka.bootstrap, TOPICS)
        bridge = await kafka.start_bridge(ROUTES, ["sse", "http"])
        async with httpx.AsyncClient(base_url=base_url(bridge), timeout=20) as client:
            async with EventStream(client) as stream:
                await produce(bridge, "odds", ["a1", "a2"])
                old_id = (await stream.until(2))[1].id
            assert (await client.post("/profiles/ann", content=b'{"v":1}')).status_code == 202
            old_etag = (await _profile(client, b'{"v":1}')).headers["etag"]
        await bridge.stop()

        await kafka.crash()  # memory only: everything is gone
        await kafka.restart()
        await ensure_topics(SETTINGS, kafka.bootstrap, TOPICS)
        bridge = await kafka.start_bridge(ROUTES, ["sse", "http"])
        try:
            await produce(bridge, "odds", ["b1", "b2", "b3", "b4"])  # past the old id's offset
            async with httpx.AsyncClient(base_url=base_url(bridge), timeout=20) as client:
                async with EventStream(client, {"Last-Event-ID": old_id}) as resumed:
                    events = await resumed.until(5)
                # The same key at the same offset in the new incarnation: not a match.
                assert (await client.post("/profiles/ann", content=b'{"v":2}')).status_code == 202
                fresh = await _profile(client, b'{"v":2}', **{"if-none-match": old_etag})
        finally:
            await bridge.stop()
    finally:
        await kafka.stop()
    assert [e.event for e in events] == ["reset", "odds", "odds", "odds", "odds"]
    assert strict_json.loads(events[0].data)["reason"] == "reset"
    assert [e.data for e in events[1:]] == ["b1", "b2", "b3", "b4"]
    assert Position.decode(events[0].id, None).epoch != Position.decode(old_id, None).epoch
    assert fresh.status_code == 200 and fresh.content == b'{"v":2}'
    assert fresh.headers["etag"] != old_etag
