"""Subscriptions that resume from a position behind the live end, served together.

A resume storm brings thousands of subscriptions of the same topic back at once, each from its
own, nearby position. Served one by one, each replays the cache on its own (the front-ends'
per-record caches - route, encoded packet - miss on every record, because records alternate)
or, when the cache no longer covers it, opens a Kafka consumer of its own and queues behind the
hub's catch-up slots. Here they share the work:

* **From the cache**: subscriptions asking in the same turn of the event loop are replayed in
  one pass, record by record, each record handed to every subscription it is new to
  (:meth:`TopicFeed.attach_all`), then all join the live feed - with no ``await`` in between, so
  the hand-over stays gap-free exactly as for a single one.
* **From Kafka**: one :class:`_Reader` (one consumer, one catch-up slot) serves many. It starts
  at the lowest position of the subscriptions waiting for it; a subscription joins a reader
  already running if it is at or after the reader's position on every partition (the reader has
  not passed anything it needs), else it waits for the next reader. Each subscription keeps its
  own position: a record is handed to it only once the reader has passed that subscription's own
  start, and it is handed over to the cache (:meth:`TopicFeed.attach`) as soon as the cache
  covers its own position.

Every subscription's ``catch_up`` future completes when it has joined the live feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from bridge.kafka.client_settings import consumer_options, to_message
from bridge.kafka.record_cache import RecordCache
from bridge.kafka.resets import LIVE, TRUNCATED
from bridge.model.config import KafkaSettings
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.telemetry.metrics import RESUMES_TRUNCATED


# What catching up needs of the hub's subscriptions and feeds, as Protocols: the hub imports this
# module, so naming its classes here would be an import cycle.
class Subscription(Protocol):
    """A resuming :class:`bridge.kafka.hub.Subscription`."""

    @property
    def closed(self) -> bool: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def subscriber(self) -> Subscriber: ...
    @property
    def after_reset(self) -> str: ...
    @property
    def catch_up(self) -> asyncio.Future[None] | None: ...
    def wants(self, record: Message) -> bool:
        """Its key and filter accept ``record``."""
        ...


class Subscriber(Protocol):
    def deliver(self, record: Message, position: Position) -> None: ...


class _HubSettings(Protocol):
    @property
    def settings(self) -> KafkaSettings: ...
    @property
    def bootstrap(self) -> str: ...


class TopicFeed(Protocol):
    """The hub's feed of one topic (:class:`bridge.kafka.hub.TopicFeed`)."""

    @property
    def topic(self) -> str: ...
    @property
    def partitions(self) -> list[int]: ...
    @property
    def epoch(self) -> int: ...
    @property
    def position(self) -> dict[int, int]: ...
    @property
    def cache(self) -> RecordCache: ...
    @property
    def hub(self) -> _HubSettings: ...

    # ``Any``: the hub's own Subscription class, which this module cannot name.
    def attach(self, subscription: Any, position: Mapping[int, int]) -> None: ...

    def attach_all(self, members: Sequence[tuple[Any, Mapping[int, int]]]) -> None: ...


log = structlog.get_logger(__name__)


@dataclass(eq=False, slots=True)
class Member:
    """A subscription waiting to join its feed, and where it is (next offset per partition)."""

    subscription: Subscription
    position: dict[int, int]

    @property
    def gone(self) -> bool:
        return self.subscription.closed

    def joined(self) -> None:
        future = self.subscription.catch_up
        if future is not None and not future.done():
            future.set_result(None)

    def failed(self, exc: BaseException) -> None:
        future = self.subscription.catch_up
        if future is None or future.done():
            return
        if isinstance(exc, Exception):
            future.set_exception(exc)
            future.exception()  # logged by the reader; whoever awaits still gets it
        else:
            future.cancel()


class CatchUps:
    """The resuming subscriptions of one feed."""

    def __init__(self, feed: TopicFeed, slots: asyncio.Semaphore) -> None:
        self.feed = feed
        self.slots = slots
        self._from_cache: list[Member] = []
        self._readers: list[_Reader] = []
        self.readers_started = 0  # for tests and benchmarks

    def add(self, subscription: Subscription, position: dict[int, int]) -> None:
        """Serve ``subscription`` from ``position`` (every partition of the feed), then join."""
        if not self._from_cache:
            asyncio.get_running_loop().call_soon(self._replay)
        self._from_cache.append(Member(subscription, position))

    def _replay(self) -> None:
        members, self._from_cache = self._from_cache, []
        covered: list[Member] = []
        for member in members:
            if member.gone:
                continue
            if self.feed.cache.covers(member.position):
                covered.append(member)
            else:
                self._read_from_kafka(member)
        if covered:
            self.feed.attach_all([(m.subscription, m.position) for m in covered])
            for member in covered:
                member.joined()

    def _read_from_kafka(self, member: Member) -> None:
        for reader in self._readers:
            if reader.accepts(member):
                reader.members.append(member)
                return
        reader = _Reader(self, [member])
        self._readers.append(reader)
        self.readers_started += 1
        reader.task = asyncio.create_task(reader.run(), name=f"catch-up:{self.feed.topic}")

    def _finished(self, reader: _Reader) -> None:
        if reader in self._readers:
            self._readers.remove(reader)

    async def stop(self) -> None:
        for reader in list(self._readers):
            if reader.task is not None:
                reader.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader.task


class _Reader:
    """One Kafka consumer reading for several subscriptions until the cache covers each."""

    def __init__(self, owner: CatchUps, members: list[Member]) -> None:
        self.owner = owner
        self.members = members
        # None until the consumer is positioned: a reader still waiting takes anyone.
        self.position: dict[int, int] | None = None
        self.task: asyncio.Task[None] | None = None

    def accepts(self, member: Member) -> bool:
        if self.position is None:
            return True
        return all(member.position.get(p, 0) >= o for p, o in self.position.items())

    async def run(self) -> None:
        feed = self.owner.feed
        try:
            async with self.owner.slots:
                await self._read(feed)
        except BaseException as exc:
            if isinstance(exc, KafkaError):
                log.warning("hub.catch_up_failed", topic=feed.topic, error=repr(exc))
            for member in self.members:
                member.failed(exc)
            raise
        finally:
            self.owner._finished(self)

    async def _read(self, feed: TopicFeed) -> None:
        self.members = [m for m in self.members if not m.gone]
        if not self.members:
            return
        hub = feed.hub
        options = consumer_options(hub.settings, hub.bootstrap, f"catchup-{feed.topic}")
        # An offset below the log start is an event to declare, never one to skip silently.
        options["auto_offset_reset"] = "none"
        consumer = AIOKafkaConsumer(**options)
        await consumer.start()
        try:
            tps = {p: TopicPartition(feed.topic, p) for p in feed.partitions}
            consumer.assign(list(tps.values()))
            await self._declare_truncated(feed, consumer, tps)
            # Members that joined during the awaits above are in the list: start below them all.
            start = {p: min(m.position.get(p, 0) for m in self.members) for p in tps}
            for partition, tp in tps.items():
                consumer.seek(tp, start[partition])
            self.position = start
            while self._hand_over(feed):
                try:
                    batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                except OffsetOutOfRangeError:
                    # Retention passed us while we read: declare it to whoever it cost records.
                    starts = await self._declare_truncated(feed, consumer, tps)
                    for partition, tp in tps.items():
                        if self.position[partition] < starts[partition]:
                            self.position[partition] = starts[partition]
                            consumer.seek(tp, starts[partition])
                    continue
                for tp, records in batches.items():
                    for raw in records:
                        self._deliver(tp.partition, raw.offset, raw)
                for partition, tp in tps.items():
                    # Skip over gaps (compaction, transaction markers) the fetch passed.
                    after = await consumer.position(tp)
                    if after > self.position[partition]:
                        self.position[partition] = after
                        for member in self.members:
                            member.position[partition] = max(member.position[partition], after)
        finally:
            with contextlib.suppress(KafkaError, asyncio.CancelledError, OSError):
                await consumer.stop()

    async def _declare_truncated(
        self, feed: TopicFeed, consumer: AIOKafkaConsumer, tps: Mapping[int, TopicPartition]
    ) -> dict[int, int]:
        """Members whose position is below the log start (retention deleted records they had
        not read) are told (``reset(TRUNCATED, position)`` where the subscriber has it), logged
        and counted, and go on from the start of what is left. Returns the log starts."""
        answer = await consumer.beginning_offsets(list(tps.values()))
        starts = {tp.partition: offset for tp, offset in answer.items()}
        for member in self.members:
            if member.gone:
                continue
            behind = {p: (o, starts[p]) for p, o in member.position.items() if o < starts.get(p, 0)}
            if not behind:
                continue
            if member.subscription.after_reset == LIVE:
                # Only what comes after: join at the feed's live position (it covers it).
                member.position.update(
                    {p: max(o, feed.position.get(p, o)) for p, o in member.position.items()}
                )
            for partition, (_, start) in behind.items():
                member.position[partition] = max(start, member.position[partition])
            RESUMES_TRUNCATED.labels(feed.topic).inc()
            log.warning(
                "hub.resume_truncated",
                topic=feed.topic,
                missing={p: f"{o}..{s - 1}" for p, (o, s) in behind.items()},
            )
            reset = getattr(member.subscription.subscriber, "reset", None)
            if reset is not None:
                reset(TRUNCATED, Position(member.position, feed.epoch))
        return starts

    def _hand_over(self, feed: TopicFeed) -> bool:
        """Members the cache now covers join the live feed; True while any is left."""
        still: list[Member] = []
        for member in self.members:
            if member.gone:
                continue
            if feed.cache.covers(member.position):
                feed.attach(member.subscription, member.position)
                member.joined()
            else:
                still.append(member)
        self.members = still
        return bool(still)

    def _deliver(self, partition: int, offset: int, raw: Any) -> None:
        assert self.position is not None
        self.position[partition] = offset + 1
        record = None
        for member in self.members:
            if member.gone or offset < member.position[partition]:
                continue  # this member started after this record
            member.position[partition] = offset + 1
            subscription = member.subscription
            if record is None:
                record = to_message(raw)
            if subscription.wants(record):
                subscription.subscriber.deliver(
                    record, Position(member.position, self.owner.feed.epoch)
                )
