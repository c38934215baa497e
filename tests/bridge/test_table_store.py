"""The table store against the real embedded broker: concurrent writes share produce rounds
and are each durable and readable when put() returns; concurrent syncs share ListOffsets
requests but never one sent before they were called."""

from __future__ import annotations

import asyncio

from bridge.kafka.hub import Hub
from bridge.kafka.table_store import TableStore
from bridge.model.message import Message


async def test_concurrent_puts_share_rounds_and_are_read_back(kafka, new_topic) -> None:
    producer, hub = kafka
    store = await TableStore(producer, hub, await new_topic(compact=True)).open()
    keys = [f"client-{i}".encode() for i in range(500)]
    produced = await asyncio.gather(*(store.put(key, b"state-" + key) for key in keys))
    assert store.rounds <= 2  # not 500 produce round trips
    assert len({p.offset for p in produced}) == 500
    for key in keys:  # visible here the moment put() returned
        record = store.get(key)
        assert record is not None and record.value == b"state-" + key


async def test_a_newer_value_replaces_one_not_yet_sent(kafka, new_topic) -> None:
    producer, hub = kafka
    topic = await new_topic(compact=True)
    store = await TableStore(producer, hub, topic).open()
    first = asyncio.ensure_future(store.put(b"k", b"old"))
    second = asyncio.ensure_future(store.put(b"k", b"new"))
    a, b = await asyncio.gather(first, second)
    assert a == b  # one record served both callers
    record = store.get(b"k")
    assert record is not None and record.value == b"new"
    # A put after the round left is a round of its own, and it wins.
    await store.put(b"k", None)
    assert store.get(b"k") is None
    reader = await Hub(hub.settings, hub.bootstrap).table(topic)
    try:
        await reader.wait_for({0: b.offset + 2}, 10)
        assert [m.value for m in reader.cache.records_after({0: 0})] == [b"new", None]
    finally:
        await reader.hub.stop()


async def test_concurrent_syncs_share_list_offsets_and_see_earlier_writes(
    kafka_bootstrap, kafka_settings, kafka, new_topic
) -> None:
    """Another instance writes; syncs started after the write see it, though a sync that
    started before the write may still be in flight when they are called."""
    producer, _ = kafka
    topic = await new_topic(partitions=3, compact=True)
    other = Hub(kafka_settings, kafka_bootstrap)
    store = await TableStore(producer, other, topic).open()
    try:
        for index in range(15):
            early = asyncio.ensure_future(store.sync())
            await asyncio.sleep(0)  # its ListOffsets request is on its way
            key = f"client-{index}".encode()
            await producer.send(Message(topic, key, b"session"))
            await asyncio.gather(*(store.sync() for _ in range(20)))
            assert store.get(key) is not None
            await early
        assert store.list_offsets <= 2 * 15 + 1
    finally:
        await other.stop()
