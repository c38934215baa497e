"""The fan-out hub against the real embedded broker: positions, sharing, exact resume."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bridge.kafka.hub import Hub, QueueSubscriber, Start
from bridge.kafka.producer import Producer
from bridge.model.message import Message
from bridge.model.position import Position


async def produce(
    producer: Producer, topic: str, values: list[str], keys: list[str] | None = None
) -> None:
    for index, value in enumerate(values):
        key = (keys[index % len(keys)] if keys else f"k{index}").encode()
        await producer.send(Message(topic, key, value.encode(), (("h", b"v"),)))


async def drain(subscriber: QueueSubscriber, count: int) -> list[tuple[Message, Position]]:
    return [await subscriber.get(timeout=10) for _ in range(count)]


def values(items: list[tuple[Message, Position]]) -> list[str]:
    return [message.value.decode() for message, _ in items if message.value is not None]


async def test_produce_and_read_back_with_positions(kafka, new_topic) -> None:
    producer, hub = kafka
    topic = await new_topic(partitions=1)
    await produce(producer, topic, [f"v{i}" for i in range(5)])
    subscriber = QueueSubscriber()
    await hub.subscribe(topic, subscriber, Start.EARLIEST)
    got = await drain(subscriber, 5)
    assert values(got) == [f"v{i}" for i in range(5)]
    assert [message.offset for message, _ in got] == [0, 1, 2, 3, 4]
    assert [position[0] for _, position in got] == [1, 2, 3, 4, 5]
    assert got[0][0].headers == (("h", b"v"),)
    assert got[0][0].key == b"k0"


async def test_live_start_skips_history(kafka, new_topic) -> None:
    producer, hub = kafka
    topic = await new_topic(partitions=3)
    await produce(producer, topic, [f"old{i}" for i in range(6)])
    subscriber = QueueSubscriber()
    await hub.subscribe(topic, subscriber, Start.LIVE)
    await produce(producer, topic, ["new0", "new1"])
    got = await drain(subscriber, 2)
    assert sorted(values(got)) == ["new0", "new1"]
    await asyncio.sleep(0.2)
    assert subscriber.queue.empty()


async def test_two_subscribers_share_one_consumer(kafka, new_topic) -> None:
    producer, hub = kafka
    topic = await new_topic(partitions=2)
    first, second = QueueSubscriber(), QueueSubscriber()
    await hub.subscribe(topic, first)
    await hub.subscribe(topic, second)
    assert list(hub.feeds()) == [topic]
    await produce(producer, topic, [f"v{i}" for i in range(4)])
    got_first, got_second = await drain(first, 4), await drain(second, 4)
    assert values(got_first) == values(got_second)
    assert hub.feeds()[topic].records_read == 4  # read once, delivered twice


async def test_key_filter(kafka, new_topic) -> None:
    producer, hub = kafka
    topic = await new_topic(partitions=3)
    subscriber = QueueSubscriber()
    await hub.subscribe(topic, subscriber, key=b"match-2")
    await produce(
        producer, topic, [f"v{i}" for i in range(9)], keys=["match-1", "match-2", "match-3"]
    )
    got = await drain(subscriber, 3)
    assert values(got) == ["v1", "v4", "v7"]


async def _resume_everywhere(producer: Producer, hub: Hub, topic: str, total: int) -> None:
    """Resuming from the position after record k yields exactly records k+1..total-1."""
    await produce(
        producer, topic, [f"v{i}" for i in range(total)], keys=[f"k{i}" for i in range(7)]
    )
    reader = QueueSubscriber()
    await hub.subscribe(topic, reader, Start.EARLIEST)
    everything = await drain(reader, total)
    for cut in (0, 3, total // 2, total - 1):
        _, position = everything[cut]
        resumed = QueueSubscriber()
        await hub.subscribe(topic, resumed, Position.decode(position.encode()))
        rest = await drain(resumed, total - cut - 1)
        expected = everything[cut + 1 :]
        # Order across partitions may differ; within a partition it must not.
        assert sorted(values(rest)) == sorted(values(expected))
        for partition in range(3):
            assert [m.offset for m, _ in rest if m.partition == partition] == [
                m.offset for m, _ in expected if m.partition == partition
            ]
        await asyncio.sleep(0.1)
        assert resumed.queue.empty(), "a record was delivered twice"


async def test_resume_from_cache_is_exact(kafka, new_topic) -> None:
    producer, hub = kafka
    await _resume_everywhere(producer, hub, await new_topic(partitions=3), 30)


async def test_resume_from_kafka_is_exact(
    kafka_bootstrap, kafka_settings, kafka, new_topic
) -> None:
    producer, _ = kafka
    hub = Hub(
        replace(kafka_settings, cache_records=4), kafka_bootstrap
    )  # most resumes miss the cache
    try:
        await _resume_everywhere(producer, hub, await new_topic(partitions=3), 40)
    finally:
        await hub.stop()


async def test_catch_up_hands_over_to_live_without_gap(
    kafka_bootstrap, kafka_settings, kafka, new_topic
) -> None:
    producer, _ = kafka
    hub = Hub(replace(kafka_settings, cache_records=0), kafka_bootstrap)
    topic = await new_topic(partitions=2)
    try:
        await produce(producer, topic, [f"a{i}" for i in range(50)])
        live = QueueSubscriber()
        await hub.subscribe(topic, live)  # the feed is now at the live end
        resumed = QueueSubscriber()
        await hub.subscribe(topic, resumed, {0: 0, 1: 0})
        # keep producing while the catch-up consumer reads history
        await produce(producer, topic, [f"b{i}" for i in range(30)])
        got = await drain(resumed, 80)
        assert sorted(values(got)) == sorted(
            [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(30)]
        )
        await asyncio.sleep(0.2)
        assert resumed.queue.empty()
    finally:
        await hub.stop()


async def test_position_ahead_of_feed_skips_what_was_seen(kafka, new_topic) -> None:
    """A client that saw more on another instance must not get those records again here."""
    producer, hub = kafka
    topic = await new_topic(partitions=1)
    subscriber = QueueSubscriber()
    await hub.subscribe(topic, subscriber, {0: 3})  # "already saw offsets 0..2"
    await produce(producer, topic, [f"v{i}" for i in range(5)])
    got = await drain(subscriber, 2)
    assert values(got) == ["v3", "v4"]
    assert [p[0] for _, p in got] == [4, 5]


async def test_table_keeps_latest_value_per_key(kafka, new_topic) -> None:
    producer, hub = kafka
    topic = await new_topic(partitions=3, compact=True)
    await produce(producer, topic, ["a1", "b1", "a2"], keys=["a", "b", "a"])
    await producer.send(Message(topic, b"b", None))  # tombstone
    feed = await hub.table(topic)
    await feed.wait_for(await feed.end_position(), timeout=10)
    assert {k: m.value for k, m in feed.latest.items()} == {b"a": b"a2"}


async def test_subscription_close_stops_delivery(kafka, new_topic) -> None:
    producer, hub = kafka
    topic = await new_topic()
    subscriber = QueueSubscriber()
    subscription = await hub.subscribe(topic, subscriber)
    subscription.close()
    await produce(producer, topic, ["x"])
    await asyncio.sleep(0.3)
    assert subscriber.queue.empty()
    assert hub.feeds()[topic].subscriber_count == 0


async def test_sync_reads_writes_made_elsewhere(
    kafka_bootstrap, kafka_settings, kafka, new_topic
) -> None:
    """A second hub (another instance) sees a record produced just before sync() returns."""
    producer, _ = kafka
    topic = await new_topic(partitions=3, compact=True)
    other = Hub(kafka_settings, kafka_bootstrap)
    try:
        feed = await other.table(topic)
        for index in range(20):
            await producer.send(Message(topic, f"client-{index}".encode(), b"session"))
            await feed.sync()
            assert f"client-{index}".encode() in feed.latest
    finally:
        await other.stop()


async def test_unreachable_broker_fails_cleanly_and_stops(kafka_settings) -> None:
    """A feed that cannot open raises to its caller, and the hub still stops without error."""
    from harness import free_port

    from bridge.model.errors import UnknownTopic

    hub = Hub(replace(kafka_settings, request_timeout_ms=1000), f"127.0.0.1:{free_port()}")
    with pytest.raises(Exception) as caught:
        await asyncio.wait_for(hub.subscribe("nowhere", QueueSubscriber()), 30)
    assert not isinstance(caught.value, UnknownTopic)
    assert "nowhere" not in hub.feeds()
    await hub.stop()
