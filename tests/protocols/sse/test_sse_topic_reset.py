"""A topic deleted and created again under a running bridge (an operator's reset, a memory-only
broker restarted): an SSE client is told, record by record nothing is skipped silently and nothing
comes twice. Real broker, real bridge, httpx."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sse_support import ODDS_ROUTE as ROUTES
from sse_support import EventStream, base_url, produce

from bridge.model import strict_json
from bridge.model.position import Position


async def recreate(bootstrap: str, topic: str, partitions: int = 1, delete_only: bool = False):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        if not delete_only:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


@pytest.fixture
async def odds(bridge_factory, new_topic, kafka_bootstrap):
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse"])
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=20) as client:
        yield bridge, topic, client


async def test_a_live_stream_is_told_of_a_recreated_topic_then_gets_the_new_records(
    odds, kafka_bootstrap
) -> None:
    bridge, topic, client = odds
    async with EventStream(client) as stream:
        await produce(bridge, topic, ["a1", "a2"])
        before = await stream.until(2)
        await recreate(kafka_bootstrap, topic)
        events = await stream.until(3)  # the reset, noticed by the hub on its own
        await produce(bridge, topic, ["b1", "b2"])
        events = await stream.until(5)
    assert [e.event for e in events] == ["odds", "odds", "reset", "odds", "odds"]
    assert [e.data for e in events if e.event == "odds"] == ["a1", "a2", "b1", "b2"]
    assert strict_json.loads(events[2].data)["reason"] == "reset"
    old = Position.decode(before[0].id, None)
    new = Position.decode(events[3].id, None)
    assert old.epoch and new.epoch and old.epoch != new.epoch, (old, new)
    assert new.to_dict() == {0: 1}  # the first record of the new incarnation


async def test_an_id_from_the_old_incarnation_resumes_with_a_reset_from_the_new_start(
    odds, kafka_bootstrap
) -> None:
    """The old id names offset 2; the new topic has 4 records by then: resuming "at offset 2"
    would silently skip two of them. The client gets a reset and all four."""
    bridge, topic, client = odds
    async with EventStream(client) as stream:
        await produce(bridge, topic, ["a1", "a2"])
        old_id = (await stream.until(2))[1].id
    await recreate(kafka_bootstrap, topic)
    await asyncio.sleep(3)  # the hub notices the new incarnation
    await produce(bridge, topic, ["b1", "b2", "b3", "b4"])
    async with EventStream(client, {"Last-Event-ID": old_id}) as resumed:
        events = await resumed.until(5)
    assert [e.event for e in events] == ["reset", "odds", "odds", "odds", "odds"]
    assert [e.data for e in events[1:]] == ["b1", "b2", "b3", "b4"]


async def test_a_deleted_topic_ends_its_streams_with_a_reason(odds, kafka_bootstrap) -> None:
    bridge, topic, client = odds
    async with EventStream(client) as stream:
        await produce(bridge, topic, ["a1"])
        await stream.until(1)
        await recreate(kafka_bootstrap, topic, delete_only=True)
        await stream.ended()
    assert [e.event for e in stream.events] == ["odds", "reset"]
    assert strict_json.loads(stream.events[1].data)["reason"] == "deleted"
