"""A route with ``after_reset = "live"`` (issue 15, items 2-3): after a reset an SSE client gets
``event: reset`` whose id is the live position, then only records produced after the reset,
never the new incarnation's earlier ones. Topic recreated under a live stream, and a resume with
an id of the old incarnation. Real broker, real bridge, httpx."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sse_support import EventStream, base_url, produce

from bridge.model import strict_json
from bridge.model.position import Position

pytestmark = pytest.mark.broker

ROUTES = """
[[routes]]
name = "odds"
topic = "{topic}"
after_reset = "live"

[routes.sse]
path = "/odds"
event = "odds"
"""


async def recreate(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


async def just_checked(bridge: object, topic: str) -> None:
    """Until the hub has just asked which incarnation it reads (it asks every 2 s), so that a
    topic recreated now, and a record produced at once, both come before it notices."""
    _, hub = bridge.kafka  # type: ignore[attr-defined]
    feed = hub.feeds()[topic]
    before = feed._checked_at  # the feed's own clock of its last identity check
    for _ in range(100):
        if feed._checked_at != before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the hub never checked its topic's identity")


@pytest.fixture
async def odds(bridge_factory, new_topic):
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse"])
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=20) as client:
        yield bridge, topic, client


async def test_live_stream_after_a_recreated_topic_gets_only_later_records(
    odds, kafka_bootstrap
) -> None:
    bridge, topic, client = odds
    async with EventStream(client) as stream:
        await produce(bridge, topic, ["a1", "a2"])
        before = await stream.until(2)
        await just_checked(bridge, topic)
        await recreate(kafka_bootstrap, topic)
        await produce(bridge, topic, ["x1"])  # in the new topic before the reset is noticed
        events = await stream.until(3)  # the reset, noticed by the hub on its own
        await produce(bridge, topic, ["b1", "b2"])
        events = await stream.until(5)
    assert [e.event for e in events] == ["odds", "odds", "reset", "odds", "odds"]
    assert [e.data for e in events if e.event == "odds"] == ["a1", "a2", "b1", "b2"]
    assert strict_json.loads(events[2].data)["reason"] == "reset"
    reset_at = Position.decode(events[2].id, None)
    old = Position.decode(before[0].id, None)
    assert reset_at.epoch and reset_at.epoch != old.epoch
    assert reset_at.to_dict() == {0: 1}  # the live end: x1 (offset 0) is behind it
    assert Position.decode(events[3].id, None).to_dict() == {0: 2}  # b1 is offset 1


async def test_resume_with_an_old_epoch_id_goes_on_live(odds, kafka_bootstrap) -> None:
    bridge, topic, client = odds
    async with EventStream(client) as stream:
        await produce(bridge, topic, ["a1", "a2"])
        old_id = (await stream.until(2))[1].id
    _, hub = bridge.kafka
    old_epoch = hub.feeds()[topic].epoch
    await recreate(kafka_bootstrap, topic)
    for _ in range(100):  # the hub notices the new incarnation
        if hub.feeds()[topic].epoch not in (0, old_epoch):
            break
        await asyncio.sleep(0.05)
    await produce(bridge, topic, ["x1", "x2", "x3"])  # before the client comes back
    await hub.feeds()[topic].sync()
    async with EventStream(client, {"Last-Event-ID": old_id}) as resumed:
        await produce(bridge, topic, ["c1"])
        events = await resumed.until(2)
    assert [e.event for e in events] == ["reset", "odds"]
    assert strict_json.loads(events[0].data)["reason"] == "reset"
    assert Position.decode(events[0].id, None).to_dict() == {0: 3}  # the live end then
    assert events[1].data == "c1"
