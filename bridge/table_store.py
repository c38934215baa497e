"""A compacted Kafka topic used as a key-value store that every bridge instance reads.

The bridge is stateless: anything that must outlive a connection or an instance (MQTT sessions,
retained messages, ownership claims) is a record in a compacted topic, keyed by what it is
about. Every instance follows the topic as a hub *table* (latest value per key), so any instance
can answer from memory once it has caught up.

Read-your-writes: :meth:`put` returns only after this instance's table has read the record back,
so a value written here is visible here at once. :meth:`sync` waits until the table has read
everything any instance had written before the call (the broker's end offsets; exact on Apache
Kafka; on Tansu exact after single-record produces, which is how this store writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from bridge.errors import KafkaUnavailable
from bridge.hub import Hub, TopicFeed
from bridge.message import Message, Produced
from bridge.producer import Producer


class TableStore:
    def __init__(self, producer: Producer, hub: Hub, topic: str, timeout_s: float = 10.0) -> None:
        self.producer = producer
        self.hub = hub
        self.topic = topic
        self.timeout_s = timeout_s
        self._feed: TopicFeed | None = None

    async def open(self) -> TableStore:
        self._feed = await self.hub.table(self.topic)
        return self

    @property
    def feed(self) -> TopicFeed:
        assert self._feed is not None, "TableStore.open() first"
        return self._feed

    def get(self, key: bytes) -> Message | None:
        """The latest value of ``key`` this instance has read (None: absent or deleted)."""
        return self.feed.latest.get(key)

    def items(self) -> list[tuple[bytes | None, Message]]:
        return list(self.feed.latest.items())

    async def put(
        self, key: bytes, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Produced:
        """Write ``value`` (None: delete) with acks=all and wait until this instance has read it."""
        produced = await self.producer.send(
            Message(self.topic, key, value, tuple(headers)), acks="all"
        )
        await self.feed.wait_for({produced.partition: produced.offset + 1}, self.timeout_s)
        return produced

    async def sync(self) -> None:
        """Until this instance has read everything written (by anyone) before the call."""
        try:
            target = await self.feed.end_position()
        except KafkaError as exc:  # ListOffsets unanswered: Kafka is away, not a client's fault
            raise KafkaUnavailable(f"Kafka did not answer ListOffsets: {exc!r}") from exc
        await self.feed.wait_for(target, self.timeout_s)
        # A write acknowledged just before the call may still be in the fetch in flight.
        await asyncio.sleep(0)
