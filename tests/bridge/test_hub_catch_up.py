"""Shared catch-ups against the real embedded broker: subscriptions resuming together from
different positions are served in one pass (cache) or by one Kafka reader, and each gets exactly
what it would have got alone, then joins live without a gap or a duplicate."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from bridge.kafka.hub import Hub, QueueSubscriber, Start
from bridge.kafka.producer import Producer
from bridge.model.message import Message
from bridge.model.position import Position

from .test_hub import drain, produce


@dataclass
class Recorder:
    """Keeps (record, position) per delivery and logs every delivery in one shared list."""

    name: int
    log: list[tuple[int, Message]]
    got: list[tuple[Message, Position]] = field(default_factory=list)

    def deliver(self, record: Message, position: Position) -> None:
        self.got.append((record, position))
        self.log.append((self.name, record))


def seen(items: list[tuple[Message, Position]]) -> list[tuple[int | None, int | None, Position]]:
    return [(m.partition, m.offset, p) for m, p in items]


async def _history(producer: Producer, hub: Hub, topic: str, total: int) -> list:
    """``total`` records, read back from the start; the feed follows the topic from before."""
    await hub.feed(topic)
    await produce(
        producer, topic, [f"v{i}" for i in range(total)], keys=[f"k{i}" for i in range(5)]
    )
    reader = QueueSubscriber()
    await hub.subscribe(topic, reader, Start.EARLIEST)
    return await drain(reader, total)


async def test_resumes_from_the_cache_share_one_pass_and_get_what_each_would_alone(
    kafka, new_topic
) -> None:
    producer, hub = kafka
    topic = await new_topic(partitions=3)
    everything = await _history(producer, hub, topic, 30)
    cuts = [0, 4, 11, 17, 25, 29]
    starts = [dict(everything[cut][1]) for cut in cuts] + [{0: 0, 1: 0, 2: 0}]
    keys = [None, b"k1", None, b"k3", None, None, b"k2"]

    alone: list[list] = []
    for start, key in zip(starts, keys, strict=True):
        solo = Recorder(0, [])
        subscription = await hub.subscribe(topic, solo, start, key=key)
        await subscription.catch_up
        alone.append(seen(solo.got))
        subscription.close()

    log: list[tuple[int, Message]] = []
    together = [Recorder(i, log) for i in range(len(starts))]
    subscriptions = await asyncio.gather(
        *(
            hub.subscribe(topic, recorder, start, key=key)
            for recorder, start, key in zip(together, starts, keys, strict=True)
        )
    )
    await asyncio.gather(*(s.catch_up for s in subscriptions))
    for recorder, expected in zip(together, alone, strict=True):
        assert seen(recorder.got) == expected
    # One pass: every record's deliveries are next to each other, not one replay per subscriber.
    runs = sum(1 for i, (_, record) in enumerate(log) if i == 0 or log[i - 1][1] is not record)
    assert runs == len({id(record) for _, record in log}) == 30
    # ... and all of them are live now.
    had = [len(recorder.got) for recorder in together]
    await produce(producer, topic, ["after"], keys=["k1"])
    for recorder, key, count in zip(together, keys, had, strict=True):
        if key in (None, b"k1"):
            record, _ = await _next(recorder, count)
            assert record.value == b"after"
    for subscription in subscriptions:
        subscription.close()


async def _next(recorder: Recorder, had: int) -> tuple[Message, Position]:
    for _ in range(200):
        if len(recorder.got) > had:
            return recorder.got[had]
        await asyncio.sleep(0.05)
    raise AssertionError("nothing arrived")


async def test_one_kafka_reader_serves_subscriptions_from_different_positions(
    kafka_bootstrap, kafka_settings, kafka, new_topic
) -> None:
    """Cache off: five resumes from five positions, one consumer, each exactly its records,
    while records keep coming; then each is live (no gap at the hand-over, no duplicate)."""
    producer, _ = kafka
    hub = Hub(replace(kafka_settings, cache_records=0), kafka_bootstrap)
    topic = await new_topic(partitions=2)
    try:
        everything = await _history(producer, hub, topic, 40)
        feed = hub.feeds()[topic]
        live = QueueSubscriber()
        await hub.subscribe(topic, live)
        cuts = [0, 7, 19, 33, 39]
        log: list[tuple[int, Message]] = []
        recorders = [Recorder(i, log) for i in range(len(cuts))]
        readers_before = feed.catch_ups.readers_started
        subscriptions = await asyncio.gather(
            *(
                hub.subscribe(topic, recorder, dict(everything[cut][1]))
                for recorder, cut in zip(recorders, cuts, strict=True)
            )
        )
        await produce(producer, topic, [f"w{i}" for i in range(20)], keys=["a", "b"])
        assert feed.catch_ups.readers_started == readers_before + 1
        for recorder, cut in zip(recorders, cuts, strict=True):
            while len(recorder.got) < 40 - cut - 1 + 20:
                await _next(recorder, len(recorder.got))
            got = recorder.got
            history = [(m.partition, m.offset) for m, _ in got if m.value.startswith(b"v")]
            expected = [(m.partition, m.offset) for m, _ in everything[cut + 1 :]]
            assert sorted(history) == sorted(expected)
            newer = sorted(m.value for m, _ in got if m.value.startswith(b"w"))
            assert newer == sorted(f"w{i}".encode() for i in range(20))
            for partition in (0, 1):
                offsets = [m.offset for m, _ in got if m.partition == partition]
                assert offsets == sorted(set(offsets)), "out of order or twice"
        await asyncio.gather(*(s.catch_up for s in subscriptions))
        await asyncio.sleep(0.2)
        assert [len(r.got) for r in recorders] == [40 - cut - 1 + 20 for cut in cuts]
    finally:
        await hub.stop()


async def test_closing_one_member_leaves_the_shared_reader_to_the_others(
    kafka_bootstrap, kafka_settings, kafka, new_topic
) -> None:
    producer, _ = kafka
    hub = Hub(replace(kafka_settings, cache_records=0), kafka_bootstrap)
    topic = await new_topic(partitions=1)
    try:
        await produce(producer, topic, [f"v{i}" for i in range(30)])
        await hub.subscribe(topic, QueueSubscriber())  # the feed at the live end
        gone, stays = QueueSubscriber(), QueueSubscriber()
        first = await hub.subscribe(topic, gone, {0: 0})
        second = await hub.subscribe(topic, stays, {0: 5})
        first.close()
        got = await drain(stays, 25)
        assert [m.offset for m, _ in got] == list(range(5, 30))
        await second.catch_up
        assert first.catch_up is not None and first.catch_up.cancelled()
        await produce(producer, topic, ["live"])
        message, position = await stays.get()
        assert message.value == b"live" and position[0] == 31
    finally:
        await hub.stop()
