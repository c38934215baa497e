"""A compacted Kafka topic used as a key-value store that every bridge instance reads.

The bridge is stateless: anything that must outlive a connection or an instance (MQTT sessions,
retained messages, ownership claims) is a record in a compacted topic, keyed by what it is
about. Every instance follows the topic as a hub *table* (latest value per key), so any instance
can answer from memory once it has caught up.

Read-your-writes: :meth:`put` returns only after Kafka acknowledged the record (acks=all) and
this instance's table has read it back, so a value written here is visible here at once.
:meth:`sync` waits until the table has read everything any instance had written before the call
(the broker's end offsets; exact on Apache Kafka; on Tansu exact after the produce batches this
store writes, whose last offset the fetch's high-water mark confirms).

Both are shared between concurrent callers, because a resume storm (thousands of MQTT sessions
leaving or arriving at once) otherwise costs one produce and one ListOffsets request each:

* writes wait :data:`LINGER_S` in a per-store queue that keeps only the newest value per key, then
  go out together (one round at a time, at most :data:`MAX_ROUND` records); every caller of a key
  in that round returns once the round is acknowledged *and* read back, so a later value that
  replaced an earlier one before it was sent satisfies both callers (compaction would keep only
  the later one anyway). The store has a producer of its own with large batches
  (:data:`BATCH_BYTES`): a round is one produce request, and its records never queue behind the
  publish path's (nor those behind them);
* one ListOffsets request is in flight at a time; a caller joins the *next* request, never one
  already sent, because only an answer asked for after the call covers the writes before it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.kafka.client_settings import client_options
from bridge.kafka.hub import Hub, TopicFeed
from bridge.kafka.producer import Producer
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message, Produced
from bridge.model.position import Position

log = structlog.get_logger(__name__)
LINGER_S = 0.002  # how long a write waits for company; a CONNECT does two writes
MAX_ROUND = 2000  # records per round: bounds what one failure fails and one ack waits for
# aiokafka sends at most one batch per partition per request and one request per broker at a
# time: with its default 16 KiB batches a round of 2,000 session records (~1 MB) took ~60
# sequential round trips, each behind whatever else the event loop was doing.
BATCH_BYTES = 512 * 1024


@dataclass(slots=True)
class _Write:
    """The newest value of one key not yet sent, and the callers waiting for it."""

    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    done: asyncio.Future[Produced] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TableStore:
    def __init__(self, producer: Producer, hub: Hub, topic: str, timeout_s: float = 10.0) -> None:
        self.producer = producer
        self.hub = hub
        self.topic = topic
        self.timeout_s = timeout_s
        self._feed: TopicFeed | None = None
        self._pending: dict[bytes, _Write] = {}
        self._writer: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None  # the store's own, started on first write
        self._next_sync: asyncio.Future[Position] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self.rounds = 0  # write rounds sent (for tests and benchmarks)
        self.list_offsets = 0  # ListOffsets requests sent

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

    # -- writing -------------------------------------------------------------------------------

    async def put(
        self, key: bytes, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Produced:
        """Write ``value`` (None: delete) with acks=all and wait until this instance has read it.

        Raises :class:`KafkaUnavailable` (not acknowledged) or :class:`TimeoutError` (not read
        back in ``timeout_s``).
        """
        write = self._pending.get(key)
        if write is None:
            write = self._pending[key] = _Write(value, tuple(headers))
        else:  # not sent yet: the newer value replaces it, for both callers
            write.value, write.headers = value, tuple(headers)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_rounds(), name=f"store:{self.topic}")
        # shield: one caller giving up must not cancel the write the others wait for
        return await asyncio.shield(write.done)

    async def _write_rounds(self) -> None:
        while self._pending:
            await asyncio.sleep(LINGER_S)
            round_: dict[bytes, _Write] = {}
            for key in list(self._pending)[:MAX_ROUND]:
                round_[key] = self._pending.pop(key)
            self.rounds += 1
            try:
                await self._write_round(round_)
            except asyncio.CancelledError:  # the loop is ending: nobody may wait forever
                stopped = KafkaUnavailable("the table store stopped")
                _fail([*round_.values(), *self._pending.values()], stopped)
                self._pending.clear()
                raise
            except Exception as exc:  # a bug: fail this round, keep serving the next ones
                log.exception("table_store.round_failed", topic=self.topic)
                _fail(round_.values(), exc)

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            options = client_options(self.hub.settings, self.hub.bootstrap, f"table-{self.topic}")
            producer = AIOKafkaProducer(
                **options,
                acks="all",
                linger_ms=0,  # the store lingers itself (LINGER_S), before the round
                max_batch_size=BATCH_BYTES,
                max_request_size=4 * BATCH_BYTES,
                enable_idempotence=False,  # the embedded broker lacks InitProducerId
            )
            try:
                await asyncio.wait_for(producer.start(), self.producer.timeout_s)
            except (KafkaError, TimeoutError, OSError) as exc:
                await producer.stop()
                raise KafkaUnavailable(f"cannot reach Kafka: {exc!r}") from exc
            self._producer = producer
            self.hub.at_stop(self.close)
        return self._producer

    async def close(self) -> None:
        """Stop the store's producer (flushing what it holds); the hub calls this on stop."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, TimeoutError, OSError, asyncio.CancelledError):
                await asyncio.wait_for(producer.stop(), 5)

    async def _write_round(self, round_: dict[bytes, _Write]) -> None:
        acked: list[tuple[_Write, asyncio.Future[Any]]] = []
        try:
            producer = await self._started_producer()
        except KafkaUnavailable as exc:
            _fail(round_.values(), exc)
            return
        for key, write in round_.items():
            try:
                future = await producer.send(
                    self.topic, value=write.value, key=key, headers=list(write.headers)
                )
            except KafkaError as exc:
                _fail([write], KafkaUnavailable(f"Kafka did not take the record: {exc!r}"))
                continue
            acked.append((write, future))
        if acked:  # asyncio.wait: no task per record, unlike gather(wait_for(...))
            await asyncio.wait([future for _, future in acked], timeout=self.producer.timeout_s)
        target: dict[int, int] = {}
        written: list[tuple[_Write, Produced]] = []
        for write, future in acked:
            if not future.done():
                future.cancel()
                _fail([write], KafkaUnavailable("Kafka did not acknowledge in time"))
                continue
            if future.cancelled() or future.exception() is not None:
                error = None if future.cancelled() else future.exception()
                _fail([write], KafkaUnavailable(f"Kafka did not acknowledge: {error!r}"))
                continue
            result = future.result()
            produced = Produced(result.topic, result.partition, result.offset, result.timestamp)
            written.append((write, produced))
            target[produced.partition] = max(target.get(produced.partition, 0), produced.offset + 1)
        try:
            await self.feed.wait_for(target, self.timeout_s)
        except TimeoutError as exc:
            _fail([write for write, _ in written], exc)
            return
        for write, produced in written:
            if not write.done.done():
                write.done.set_result(produced)

    # -- reading everything written before now -------------------------------------------------

    async def sync(self) -> None:
        """Until this instance has read everything written (by anyone) before the call."""
        if self._next_sync is None:
            self._next_sync = asyncio.get_running_loop().create_future()
            if self._syncer is None or self._syncer.done():
                self._syncer = asyncio.create_task(self._list_offsets(), name=f"sync:{self.topic}")
        target = await asyncio.shield(self._next_sync)
        await self.feed.wait_for(target, self.timeout_s)
        # A write acknowledged just before the call may still be in the fetch in flight.
        await asyncio.sleep(0)

    async def _list_offsets(self) -> None:
        while self._next_sync is not None:
            # Taken before the request is sent: everyone waiting on it asked before it left.
            future, self._next_sync = self._next_sync, None
            self.list_offsets += 1
            try:
                future.set_result(await self.feed.end_position())
            except KafkaError as exc:  # unanswered: Kafka is away, not a client's fault
                future.set_exception(KafkaUnavailable(f"Kafka did not answer ListOffsets: {exc!r}"))
            except BaseException as exc:
                future.set_exception(exc if isinstance(exc, Exception) else KafkaUnavailable())
                raise
            _retrieve(future)


def _fail(writes: Any, exc: BaseException) -> None:
    for write in writes:
        if not write.done.done():
            write.done.set_exception(exc)
            _retrieve(write.done)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an exception as seen: its callers may all have given up, which is no error."""
    if future.done() and not future.cancelled():
        future.exception()
