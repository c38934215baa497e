"""Finding one record by a header value, reading partitions from given offsets to their end.

For recovery only (a new owner checking whether a dead owner's produce reached Kafka): a
short-lived group-less consumer reads each partition from its start offset up to the high-water
mark of a fetch (Tansu's ``end_offsets`` is a batch short; a fetch's high-water mark is right).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge.kafka.client_settings import consumer_options, to_message
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Message


async def find_by_header(
    settings: KafkaSettings,
    bootstrap: str,
    topic: str,
    starts: Mapping[int, int],
    header: str,
    value: bytes,
    timeout: float,
) -> Message | None:
    """The first record of ``topic`` carrying ``header: value``, reading every partition from
    ``starts`` (a partition it does not name: from its beginning) to its end; None if none.
    Raises KafkaUnavailable (Kafka away, or not done within ``timeout``) or UnknownTopic."""
    consumer = AIOKafkaConsumer(**consumer_options(settings, bootstrap, f"search-{topic}"))
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise UnknownTopic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            beginnings = await consumer.beginning_offsets(tps)
            position: dict[TopicPartition, int] = {}
            for tp in tps:
                # Never before the log's start (retention), never past a fetch's high-water mark.
                position[tp] = max(starts.get(tp.partition, 0), beginnings[tp])
                consumer.seek(tp, position[tp])
            pending = set(tps)
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=200, max_records=5000)
                for tp, records in batches.items():
                    for record in records:
                        if any(n == header and v == value for n, v in record.headers):
                            return to_message(record)
                    if records:
                        position[tp] = records[-1].offset + 1
                for tp in list(pending):
                    highwater = consumer.highwater(tp)
                    if highwater is not None and position[tp] >= highwater:
                        pending.discard(tp)
            return None
    except TimeoutError as exc:
        raise KafkaUnavailable(f"searching {topic!r} took longer than {timeout} s") from exc
    except KafkaError as exc:
        raise KafkaUnavailable(f"cannot search {topic!r}: {exc!r}") from exc
    finally:
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, KafkaError, OSError):
            await asyncio.wait_for(consumer.stop(), 5)
