"""The fan-out hub: one Kafka consumer per topic per process, shared by every local subscriber.

A :class:`TopicFeed` reads one topic from its live end (or, for a *table* topic, from the start,
keeping the latest value per key), keeps a bounded :class:`RecordCache` of recent records and
hands each record to every subscriber synchronously, in one pass. Subscribers never block the
feed: :meth:`Subscriber.deliver` must only buffer (front-ends close a client whose buffer
overflows, and the client resumes by position).

Where a subscription starts:

* ``LIVE``: the feed's own consumed position, so "live" is exactly what this process has seen
  and nothing in between is lost or repeated (the broker's ``end_offsets`` can be a batch off on
  Tansu; the feed only becomes ready once a fetch has confirmed the high-water mark);
* ``EARLIEST``: everything still in Kafka;
* a :class:`~bridge.position.Position`: exactly the records after it. Recent positions are served
  from the cache; older ones are read from Kafka by a short-lived catch-up consumer that hands
  over to the cache without a gap or an overlap (the hand-over happens with no ``await`` in
  between, so no record can slip past). Subscriptions resuming together share that work
  (:mod:`bridge.kafka.catch_up`); each one's ``catch_up`` future completes once it has joined live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from bridge.kafka.catch_up import CatchUps
from bridge.kafka.client_settings import client_options, consumer_options, to_message
from bridge.kafka.record_cache import RecordCache
from bridge.kafka.resets import DELETED, FROM_START, LIVE, RESET, TRUNCATED
from bridge.kafka.topic_identity import topic_ids
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Message
from bridge.model.position import Position, epoch_of
from bridge.model.record_filter import FilterIndex, RecordFilter, RecordView
from bridge.telemetry.activity import TopicActivity
from bridge.telemetry.metrics import FANOUT_LAG_SECONDS, STREAM_RESETS

log = structlog.get_logger(__name__)

# How often a feed asks Kafka which incarnation of its topic it is reading (one small Metadata
# request): a topic deleted and created again, or a broker replaced, is noticed this fast.
IDENTITY_CHECK_S = 2.0


class Start(Enum):
    LIVE = "live"
    EARLIEST = "earliest"


class Subscriber(Protocol):
    def deliver(self, record: Message, position: Position) -> None:
        """Take one record; ``position`` is where a reader is after it. Must not block."""


class ResettableSubscriber(Subscriber, Protocol):
    """A subscriber that wants to know when its feed starts its topic again.

    ``reset(reason, position)`` comes before the first record of the new start: ``reason`` is
    :data:`RESET` (a new incarnation: read from its start), :data:`TRUNCATED` (records were
    deleted before they were read: what is left follows) or :data:`DELETED` (``position`` None:
    the topic is gone and nothing more will come). Must not block. Subscribers without the
    method just get the records that follow, with positions of the new epoch.
    """

    def reset(self, reason: str, position: Position | None) -> None: ...


@dataclass(eq=False, slots=True)
class Subscription:
    """A subscriber's membership of one feed; ``close()`` leaves it."""

    feed: TopicFeed
    subscriber: Subscriber
    key: bytes | None
    # Partitions where this subscriber is already further than the feed (it resumed on another
    # instance that had read more). Records before these offsets are skipped.
    ahead: dict[int, int] | None = None
    closed: bool = False
    # Set when it starts from a position: done once it has joined the live feed.
    catch_up: asyncio.Future[None] | None = field(default=None, repr=False)
    # Only records this canonical filter accepts are delivered (positions still advance past
    # the others). Live subscriptions with equal filters form one group in the feed, so the
    # filter runs once per record for the whole group.
    filter: RecordFilter | None = None
    # After a reset or truncation: what is available from its start (FROM_START), or only the
    # records produced after it (LIVE: the feed skips the rest for it through ``ahead``).
    after_reset: str = FROM_START

    def wants(self, record: Message) -> bool:
        """Key and filter (the per-subscription check, for replays and catch-ups)."""
        if self.key is not None and record.key != self.key:
            return False
        return self.filter is None or self.filter.matches_record(record)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.feed._detach(self)
        if self.catch_up is not None and not self.catch_up.done():
            self.catch_up.cancel()


class TopicFeed:
    def __init__(self, hub: Hub, topic: str, table: bool) -> None:
        self.hub = hub
        self.topic = topic
        self.table = table  # read from the start and keep the latest value per key
        self.cache = RecordCache(hub.settings.cache_records)
        self.position: dict[int, int] = {}
        self.latest: dict[bytes | None, Message] = {}
        self.partitions: list[int] = []
        # Which incarnation of the topic this feed reads (bridge.model.position.epoch_of), 0 if
        # the cluster gives no topic ids.
        self.topic_id: bytes = b""
        self.epoch = 0
        self._checked_at = 0.0
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None
        self._all: set[Subscription] = set()
        self._by_key: dict[bytes, set[Subscription]] = {}
        # Filtered live subscriptions grouped by (key, canonical filter): each group's filter
        # is evaluated once per record, however many subscribers share it.
        self._by_filter: dict[tuple[bytes | None, RecordFilter], set[Subscription]] = {}
        self.filter_evaluations = 0  # how many times a filter ran (tests prove the sharing)
        # The groups' filters indexed by their equality conditions; rebuilt (lazily, at the next
        # record) when a group is created or removed, not when a member joins or leaves.
        self._filter_index: FilterIndex[tuple[bytes | None, RecordFilter]] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[dict[int, int], asyncio.Future[None]]] = []
        self.records_read = 0
        # Last record time and records/s for the catalog (bridge/telemetry/activity.py).
        self.activity = TopicActivity()
        self.started_at = time.time()
        self._lag = FANOUT_LAG_SECONDS.labels(topic)
        self.catch_ups = CatchUps(self, hub._catch_up_slots)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"feed:{self.topic}")

    async def stop(self) -> None:
        await self.catch_ups.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_consumer()

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        # With the broker gone, aiokafka's stop() can raise or be cancelled mid-way; a stopping
        # bridge must still finish stopping.
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, KafkaError, OSError):
            await asyncio.wait_for(consumer.stop(), 5)

    async def _run(self) -> None:
        try:
            await self._open()
        except Exception as exc:
            # Reported to whoever awaits readiness (Hub.feed raises it); the task itself ends
            # quietly so no "exception was never retrieved" noise, and the consumer is closed.
            # aiokafka's errors stop here: front-ends only ever see the core's own errors.
            self.failed = (
                KafkaUnavailable(f"cannot follow {self.topic!r}: {exc!r}")
                if isinstance(exc, KafkaError | OSError | TimeoutError)
                else exc
            )
            self.ready.set()
            await self._close_consumer()
            return
        self._checked_at = time.monotonic()
        while True:
            assert self._consumer is not None
            try:
                wait_ms = 1000 if self.ready.is_set() else 50
                batches = await self._consumer.getmany(timeout_ms=wait_ms, max_records=5000)
            except OffsetOutOfRangeError:
                # Asked for offsets the partition no longer (or not yet) has: never skip silently.
                if not await self._start_again(await self._out_of_range_reason()):
                    return
                continue
            except KafkaError as exc:
                log.warning("hub.fetch_failed", topic=self.topic, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    self._dispatch(to_message(record))
            if not self.ready.is_set() and self._caught_up_to_highwater():
                self.ready.set()
                log.debug(
                    "hub.feed_ready", topic=self.topic, position=self.position, table=self.table
                )
            self._wake_waiters()
            if time.monotonic() - self._checked_at >= IDENTITY_CHECK_S:
                self._checked_at = time.monotonic()
                reason = await self._incarnation_changed()
                if reason is not None and not await self._start_again(reason):
                    return

    # -- incarnations: a topic recreated, truncated or deleted under a running feed ----------

    async def _incarnation_changed(self) -> str | None:
        """:data:`RESET` or :data:`DELETED` if the topic is not the one this feed opened."""
        try:
            found = (await self.hub.topic_ids([self.topic])).get(self.topic, b"")
        except Exception as exc:  # Kafka away: no answer is not a new incarnation
            log.debug("hub.identity_unknown", topic=self.topic, error=repr(exc))
            return None
        if found is None:
            return DELETED
        if found and found != self.topic_id:
            return RESET
        if not found:  # no topic ids on this cluster: a high-water mark below us says the same
            assert self._consumer is not None
            for partition in self.partitions:
                highwater = self._consumer.highwater(TopicPartition(self.topic, partition))
                if highwater is not None and highwater < self.position.get(partition, 0):
                    return RESET
        return None

    async def _out_of_range_reason(self) -> str:
        """Below the log start is truncation; past the end is a new incarnation."""
        assert self._consumer is not None
        tps = [TopicPartition(self.topic, p) for p in self.partitions]
        try:
            ends = await self._consumer.end_offsets(tps)
        except KafkaError:
            return RESET
        past_end = any(self.position.get(tp.partition, 0) > end for tp, end in ends.items())
        return RESET if past_end else TRUNCATED

    async def _start_again(self, reason: str) -> bool:
        """Read the topic again from the start of what it has now and tell the subscribers.
        False when the topic is gone (the feed has ended)."""
        old_epoch = self.epoch
        STREAM_RESETS.labels(self.topic, reason).inc()
        await self._close_consumer()
        self.position = {}
        self.cache = RecordCache(self.hub.settings.cache_records)
        if reason != TRUNCATED:
            self.latest.clear()
        if reason != DELETED:
            try:
                await self._open(from_start=True)
            except UnknownTopic:
                reason = DELETED
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("hub.reopen_failed", topic=self.topic, error=repr(exc))
                reason = DELETED
        log.warning(
            "hub.stream_reset",
            topic=self.topic,
            reason=reason,
            old_epoch=f"{old_epoch:08x}",
            epoch=f"{self.epoch:08x}",
            position=self.position,
        )
        position = None if reason == DELETED else Position(self.position, self.epoch)
        subscriptions = [
            *self._all,
            *(s for keyed in self._by_key.values() for s in keyed),
            *(s for group in self._by_filter.values() for s in group),
        ]
        live, fetched = (
            await self._live_after_reset(subscriptions) if position is not None else (None, [])
        )
        for subscription in subscriptions:
            told = position
            if live is not None and subscription.after_reset == LIVE:
                # Only what comes after the reset: the feed reads the new start for the others,
                # this one skips up to the end as it is now (and is told that position).
                subscription.ahead = {p: o for p, o in live.items() if o > self.position[p]}
                subscription.ahead = subscription.ahead or None
                told = live
            reset = getattr(subscription.subscriber, "reset", None)
            if reset is not None:
                reset(reason, told)
        if reason == DELETED:
            self.failed = UnknownTopic(self.topic)
            self.hub.forget(self)
            return False
        for record in fetched:  # after every subscriber was told, as any other record
            self._dispatch(record)
        self._wake_waiters()
        return True

    async def _live_after_reset(
        self, subscriptions: list[Subscription]
    ) -> tuple[Position | None, list[Message]]:
        """The end of the topic now, if a subscription wants only what follows a reset, and the
        records fetched to learn it (dispatched by the caller once the subscribers were told).

        The end is a fetch's high-water mark: ``end_offsets`` alone can be a batch short on
        Tansu (docs/tansu-behaviour.md), which would pass records of before the reset as live."""
        if not any(s.after_reset == LIVE for s in subscriptions):
            return None, []
        consumer = self._consumer
        assert consumer is not None
        fetched: list[Message] = []
        try:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            fetched = [to_message(r) for records in batches.values() for r in records]
            ends = await self.end_position()
        except KafkaError as exc:  # unknown: from the start, as if not asked (never a gap)
            log.warning("hub.live_after_reset_unknown", topic=self.topic, error=repr(exc))
            return None, fetched
        live: dict[int, int] = {}
        for partition, end in ends.items():
            highwater = consumer.highwater(TopicPartition(self.topic, partition))
            live[partition] = max(end, highwater or 0, self.position.get(partition, 0))
        return Position(live, self.epoch), fetched

    async def _open(self, from_start: bool = False) -> None:
        options = consumer_options(self.hub.settings, self.hub.bootstrap, f"hub-{self.topic}")
        options["auto_offset_reset"] = "none"  # out of range is an event to handle, not to skip
        consumer = AIOKafkaConsumer(**options)
        self._consumer = consumer  # set first, so a failed start() is still closed
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise UnknownTopic(self.topic)
        self.partitions = sorted(partitions)
        tps = [TopicPartition(self.topic, p) for p in self.partitions]
        consumer.assign(tps)
        try:
            found = (await self.hub.topic_ids([self.topic])).get(self.topic, b"")
        except (KafkaError, OSError, TimeoutError) as exc:  # no incarnations known: as before
            log.warning("hub.identity_unknown", topic=self.topic, error=repr(exc))
            found = b""
        self.topic_id = found or b""
        self.epoch = epoch_of(self.topic_id)
        starts = await (
            consumer.beginning_offsets(tps)
            if self.table or from_start
            else consumer.end_offsets(tps)
        )
        for tp in tps:
            consumer.seek(tp, starts[tp])
            self.position[tp.partition] = starts[tp]
            self.cache.reset(tp.partition, starts[tp])

    def _caught_up_to_highwater(self) -> bool:
        assert self._consumer is not None
        for partition in self.partitions:
            highwater = self._consumer.highwater(TopicPartition(self.topic, partition))
            if highwater is None or self.position[partition] < highwater:
                return False
        return True

    # -- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, record: Message) -> None:
        assert record.partition is not None and record.offset is not None
        self.records_read += 1
        self.activity.note(record.timestamp_ms)
        self.position[record.partition] = record.offset + 1
        self.cache.append(record)
        if self.table:
            if record.value is None:
                self.latest.pop(record.key, None)
            else:
                self.latest[record.key] = record
        if not self._all and not self._by_key and not self._by_filter:
            return
        if self.ready.is_set() and record.timestamp_ms is not None:
            self._lag.observe(max(time.time() - record.timestamp_ms / 1000, 0.0))
        position = Position(self.position, self.epoch)
        for subscription in tuple(self._all):
            _deliver(subscription, record, position)
        if record.key is not None:
            for subscription in tuple(self._by_key.get(record.key, ())):
                _deliver(subscription, record, position)
        if self._by_filter:
            index = self._filter_index
            if index is None:
                index = self._filter_index = FilterIndex((f, (k, f)) for k, f in self._by_filter)
            view = RecordView(record)  # the value is parsed once for every filter
            for record_filter, group_key in index.candidates(view):
                key = group_key[0]
                if key is not None and record.key != key:
                    continue
                self.filter_evaluations += 1
                if record_filter.matches(view):
                    for subscription in tuple(self._by_filter.get(group_key, ())):
                        _deliver(subscription, record, position)

    def attach(self, subscription: Subscription, position: Mapping[int, int]) -> None:
        """Replay cached records after ``position``, then join live. Never awaits."""
        self.attach_all([(subscription, position)])

    def attach_all(self, members: Sequence[tuple[Subscription, Mapping[int, int]]]) -> None:
        """:meth:`attach` for several subscriptions in one pass over the cache. Never awaits.

        Each record goes to every subscription it is new to before the next record, so a
        front-end's per-record work (route, encoded packet) is done once per record, not once
        per subscription. What each subscription gets, and the positions with it, are exactly
        what it would get attached alone.
        """
        replays: list[tuple[Subscription, dict[int, int], dict[int, int]]] = []
        for subscription, position in members:
            assert self.cache.covers(position)
            ahead = {p: o for p, o in position.items() if o > self.position.get(p, 0)}
            replays.append((subscription, dict(position), ahead))
        lowest: dict[int, int] = {}
        for _, start, _ in replays:
            for partition, offset in start.items():
                lowest[partition] = min(offset, lowest.get(partition, offset))
        starts = [dict(start) for _, start, _ in replays]
        for record in self.cache.records_after(lowest):
            assert record.partition is not None and record.offset is not None
            partition, offset = record.partition, record.offset
            view: RecordView | None = None  # parsed once per record for every filter
            verdicts: dict[RecordFilter, bool] = {}  # once per record per distinct filter
            for (subscription, replay_position, _), start in zip(replays, starts, strict=True):
                if subscription.closed or offset < start.get(partition, 0):
                    continue
                # Where a reader is after this record: everything read so far on every
                # partition that this replay has passed, never less than where it asked to start.
                replay_position[partition] = offset + 1
                if subscription.key is not None and record.key != subscription.key:
                    continue
                wanted = subscription.filter
                if wanted is not None:
                    verdict = verdicts.get(wanted)
                    if verdict is None:
                        view = view or RecordView(record)
                        verdict = verdicts[wanted] = wanted.matches(view)
                    if not verdict:
                        continue
                subscription.subscriber.deliver(record, Position(replay_position, self.epoch))
        for subscription, _, ahead in replays:
            if subscription.closed:
                continue
            subscription.ahead = ahead or None
            if subscription.filter is not None:
                group = (subscription.key, subscription.filter)
                if group not in self._by_filter:
                    self._filter_index = None
                self._by_filter.setdefault(group, set()).add(subscription)
            elif subscription.key is None:
                self._all.add(subscription)
            else:
                self._by_key.setdefault(subscription.key, set()).add(subscription)

    def _detach(self, subscription: Subscription) -> None:
        self._all.discard(subscription)
        if subscription.filter is not None:
            group_key = (subscription.key, subscription.filter)
            group = self._by_filter.get(group_key)
            if group is not None:
                group.discard(subscription)
                if not group:
                    del self._by_filter[group_key]
                    self._filter_index = None
            return
        if subscription.key is not None:
            members = self._by_key.get(subscription.key)
            if members is not None:
                members.discard(subscription)
                if not members:
                    del self._by_key[subscription.key]

    @property
    def subscriber_count(self) -> int:
        return (
            len(self._all)
            + sum(len(s) for s in self._by_key.values())
            + sum(len(s) for s in self._by_filter.values())
        )

    def consumer_lag(self) -> int | None:
        """Records Kafka has that this feed has not read yet, over all partitions (None before
        the first fetch told the high watermarks). Read by the catalog, never on the hot path."""
        consumer = self._consumer
        if consumer is None or not self.ready.is_set():
            return None
        lag = 0
        for partition in self.partitions:
            highwater = consumer.highwater(TopicPartition(self.topic, partition))
            if highwater is None:
                return None
            lag += max(highwater - self.position.get(partition, 0), 0)
        return lag

    @property
    def filter_groups(self) -> int:
        """Distinct (key, filter) groups among the live subscriptions."""
        return len(self._by_filter)

    # -- waiting for a position ---------------------------------------------------------------

    async def wait_for(self, position: Mapping[int, int], timeout: float | None = None) -> None:
        """Until this feed has read everything before ``position``."""
        if self._reached(position):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((dict(position), future))
        await asyncio.wait_for(future, timeout)

    def _reached(self, position: Mapping[int, int]) -> bool:
        return all(self.position.get(p, 0) >= o for p, o in position.items())

    def _wake_waiters(self) -> None:
        if not self._waiters:
            return
        still: list[tuple[dict[int, int], asyncio.Future[None]]] = []
        for position, future in self._waiters:
            if future.done():
                continue
            if self._reached(position):
                future.set_result(None)
            else:
                still.append((position, future))
        self._waiters = still

    async def sync(self, timeout: float | None = 10.0) -> None:
        """Until this feed has read everything produced before the call, by anyone.

        Read-your-writes across instances (an MQTT session written on another bridge). The
        target is the larger of a fresh ListOffsets answer and the high-water mark of a fetch
        answered after the call: ListOffsets is exact on Apache Kafka but can be a batch short
        on Tansu, where the fetch's high-water mark is right.
        """
        assert self._consumer is not None
        target = dict(await self.end_position())
        await asyncio.sleep(2 * self.hub.settings.fetch_max_wait_ms / 1000 + 0.005)
        for partition in self.partitions:
            highwater = self._consumer.highwater(TopicPartition(self.topic, partition))
            if highwater is not None and highwater > target.get(partition, 0):
                target[partition] = highwater
        await self.wait_for(target, timeout)

    async def end_position(self) -> Position:
        """The broker's end offsets now (for "read your writes" across instances)."""
        assert self._consumer is not None
        tps = [TopicPartition(self.topic, p) for p in self.partitions]
        ends = await self._consumer.end_offsets(tps)
        return Position({tp.partition: offset for tp, offset in ends.items()})


def _deliver(subscription: Subscription, record: Message, position: Position) -> None:
    ahead = subscription.ahead
    if ahead is not None:
        assert record.partition is not None and record.offset is not None
        wanted = ahead.get(record.partition)
        if wanted is not None:
            if record.offset < wanted:
                return
            if record.offset + 1 >= wanted:
                del ahead[record.partition]
        position = position.merged(ahead)
        if not ahead:
            subscription.ahead = None
    subscription.subscriber.deliver(record, position)


class Hub:
    """All topic feeds of one bridge process."""

    def __init__(self, settings: KafkaSettings, bootstrap: str, max_catch_ups: int = 32) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self._feeds: dict[str, TopicFeed] = {}
        self._catch_up_slots = asyncio.Semaphore(max_catch_ups)
        self.tables: set[str] = set()
        self._at_stop: list[Callable[[], Awaitable[None]]] = []
        self._identity: AIOKafkaClient | None = None
        self._identity_lock = asyncio.Lock()

    async def topic_ids(self, topics: list[str]) -> dict[str, bytes | None]:
        """Kafka's topic ids (:mod:`bridge.kafka.topic_identity`), through one small client of
        the hub's own, so the checks never queue behind a feed's fetches."""
        async with self._identity_lock:
            if self._identity is None:
                client = AIOKafkaClient(**client_options(self.settings, self.bootstrap, "identity"))
                try:
                    await client.bootstrap()
                except BaseException:
                    await client.close()
                    raise
                self._identity = client
        return await topic_ids(self._identity, topics)

    def forget(self, feed: TopicFeed) -> None:
        """Drop an ended feed (its topic was deleted): the next subscriber opens a new one."""
        if self._feeds.get(feed.topic) is feed:
            del self._feeds[feed.topic]

    def at_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when the hub stops, before its feeds (a table store's producer)."""
        self._at_stop.append(closer)

    async def stop(self) -> None:
        closers, self._at_stop = self._at_stop, []
        for closer in closers:
            with contextlib.suppress(Exception):
                await closer()
        feeds, self._feeds = self._feeds, {}
        for feed in feeds.values():
            await feed.stop()
        identity, self._identity = self._identity, None
        if identity is not None:
            # Closed mid-connect (Kafka away), aiokafka can raise about its half-open socket; a
            # stopping bridge must still finish stopping.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(identity.close(), 5)

    async def feed(self, topic: str, table: bool = False) -> TopicFeed:
        """The (started, ready) feed of ``topic``; ``table`` feeds read from the start."""
        feed = self._feeds.get(topic)
        if feed is None:
            feed = TopicFeed(self, topic, table or topic in self.tables)
            self._feeds[topic] = feed
            feed.start()
        await feed.ready.wait()
        if feed.failed is not None:
            self._feeds.pop(topic, None)
            raise feed.failed
        return feed

    async def table(self, topic: str) -> TopicFeed:
        """A feed that holds the latest value of every key of a (compacted) topic."""
        self.tables.add(topic)
        feed = self._feeds.get(topic)
        if feed is not None and not feed.table:
            raise ValueError(f"{topic} is already followed from its live end, not as a table")
        return await self.feed(topic, table=True)

    async def subscribe(
        self,
        topic: str,
        subscriber: Subscriber,
        start: Start | Mapping[int, int] = Start.LIVE,
        key: bytes | None = None,
        record_filter: RecordFilter | None = None,
        after_reset: str = FROM_START,
    ) -> Subscription:
        """Deliver the records of ``topic`` (only those with ``key`` and accepted by
        ``record_filter``, if given) from ``start``. Positions delivered are always those of the
        topic: a record filtered out still moves the next delivered position past it.
        ``after_reset``: after the topic is reset or truncated under this subscription, what is
        available from its start (:data:`FROM_START`) or only what follows (:data:`LIVE`)."""
        feed = await self.feed(topic)
        subscription = Subscription(
            feed, subscriber, key, filter=record_filter, after_reset=after_reset
        )
        if start is Start.LIVE:
            feed.attach(subscription, dict(feed.position))
            return subscription
        asked: Mapping[int, int] = {} if isinstance(start, Start) else start
        # Partitions the topic does not have are dropped; partitions the position lacks (the
        # topic grew) are read from their start.
        position = {p: asked.get(p, 0) for p in feed.partitions}
        subscription.catch_up = asyncio.get_running_loop().create_future()
        feed.catch_ups.add(subscription, position)
        return subscription

    def feeds(self) -> Mapping[str, TopicFeed]:
        return self._feeds


Callback = Callable[[Message, Position], None]


@dataclass(slots=True)
class CallbackSubscriber:
    """Adapts a plain function to :class:`Subscriber` (handy for internal readers and tests)."""

    callback: Callback

    def deliver(self, record: Message, position: Position) -> None:
        self.callback(record, position)


@dataclass(slots=True)
class QueueSubscriber:
    """Buffers records in an unbounded asyncio queue; for tests and low-volume internal use."""

    queue: asyncio.Queue[tuple[Message, Position]] = field(default_factory=asyncio.Queue)

    def deliver(self, record: Message, position: Position) -> None:
        self.queue.put_nowait((record, position))

    async def get(self, timeout: float = 10.0) -> tuple[Message, Position]:
        return await asyncio.wait_for(self.queue.get(), timeout)


AsyncCallback = Callable[[Message, Position], Awaitable[None]]
