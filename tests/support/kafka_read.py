"""Reading what a test's topic holds, with a plain aiokafka consumer (no bridge code involved).

Exact to each partition's high-water mark as a fetch reports it (Tansu's end offsets can be stale
after a batch; a fetch's highwater is right), so "nothing was produced" can be asserted.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` now, in (partition, offset) order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[Any] = []
        done: set[int] = set()
        while len(done) < len(tps):
            batches = await consumer.getmany(timeout_ms=200)
            found += [r for batch in batches.values() for r in batch]
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    done.add(tp.partition)
        return sorted(found, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()
