"""Plain aiokafka plumbing shared by the demo services (they are ordinary Kafka clients, like a
real deployment's backend; nothing here knows about the bridge)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

# Tansu holds a fetch for the whole max wait; keep it short so the demo feels live.
FETCH_MAX_WAIT_MS = 20
CATCH_UP_LIMIT_S = 15.0


def producer(bootstrap: str, client_id: str) -> AIOKafkaProducer:
    # acks=all: a reply or a verified bet must be durable before anyone is told about it.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id=client_id, acks="all", linger_ms=0
    )


def consumer(
    bootstrap: str, client_id: str, group: str | None = None, *topics: str
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )


async def assign_all(client: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Assign every partition of ``topics`` (no group) and rewind to the beginning."""
    partitions = []
    for topic in topics:
        for _ in range(50):  # metadata for a just-created topic can lag a moment
            found = client.partitions_for_topic(topic)
            if found:
                break
            await client._client.force_metadata_update()
            await asyncio.sleep(0.1)
        partitions += [TopicPartition(topic, p) for p in sorted(found or ())]
    client.assign(partitions)
    await client.seek_to_beginning(*partitions)
    return partitions


async def read_to_end(
    bootstrap: str, client_id: str, topics: Sequence[str]
) -> list[ConsumerRecord]:
    """Every record now in ``topics``, in partition order: a service rebuilding its state.

    The end is each partition's high watermark as reported by a fetch (Tansu's end_offsets are
    wrong after a batch, a fetch's highwater is right).
    """
    client = consumer(bootstrap, client_id)
    await client.start()
    records: list[ConsumerRecord] = []
    try:
        partitions = await assign_all(client, topics)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_LIMIT_S
        while loop.time() < deadline:
            batch = await client.getmany(timeout_ms=100)
            for chunk in batch.values():
                records.extend(chunk)
            if all([await _caught_up(client, tp) for tp in partitions]):
                break
    finally:
        await client.stop()
    return records


async def _caught_up(client: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    highwater = client.highwater(tp)
    return highwater is not None and await client.position(tp) >= highwater


async def consume(
    client: AIOKafkaConsumer,
    stop: asyncio.Event,
    handle: Callable[[ConsumerRecord], Awaitable[None]],
    commit: bool = False,
) -> None:
    """Hand every record to ``handle`` until ``stop``; with ``commit``, commit each batch once
    it is handled (at-least-once: a crash mid-batch replays it, so handlers must tolerate it)."""
    while not stop.is_set():
        batch = await client.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                await handle(record)
        if batch and commit:
            await client.commit()


def decode(record: ConsumerRecord) -> Any:
    """The JSON value of a record; None for a tombstone or a value that is not JSON."""
    if record.value is None:
        return None
    try:
        return json.loads(record.value)
    except (ValueError, UnicodeDecodeError):
        return None


def encode(value: Any) -> bytes:
    # allow_nan=False: a non-finite number raises here rather than reach a consumer as NaN.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None
