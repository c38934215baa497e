"""Records of one event-loop turn handed to aiokafka as whole batches (its batch API).

aiokafka's per-record ``send()`` is a coroutine that, per record, waits on metadata, serializes,
partitions and appends to its accumulator: ~15 us of Python per record on this machine. Its batch
API (``create_batch()``, ``BatchBuilder.append()``, ``send_batch()``) costs about half that, but
leaves partitioning, batching and per-record completion to the caller. :class:`PartitionBatcher`
does those three for one aiokafka producer (one acks level):

* partitioning: the bridge's :class:`~bridge.partitioner.CachingPartitioner` on the producer's
  own metadata, so a key lands on the partition ``send()`` would have chosen;
* batching: records are appended to an open batch per (topic, partition); the open batches go to
  aiokafka at the end of the loop turn (``call_soon``), or when one is full (aiokafka's
  ``max_batch_size``; one record bigger than that gets a batch of its own, as in ``send()``); a
  batch handed over keeps taking its partition's records until aiokafka's sender builds it for a
  request, as ``send()`` appends to the batch waiting in aiokafka's accumulator;
* completion: each record has its own future, resolved in append order when its batch's future
  resolves, with the record's own offset and timestamp -- or the batch's error. Nothing is
  resolved before Kafka acknowledged (per the producer's acks).
* deadline: a batch Kafka has not acknowledged ``timeout_s`` after it opened fails its records
  (one timer per batch), as a timed-out ``send()`` would: callers that do not await (HTTP
  produce, the ledger, MQTT PUBACKs) get an answer even from a broker that hangs.

Order: batches of one partition reach aiokafka in the order they were opened (one flusher task
takes them in turn), so records of one partition keep their order, as with ``send()``. While the
flusher waits for aiokafka to take a batch (one batch per partition may wait in its accumulator),
new records keep filling the open batches: the same back-pressure ``send()`` has.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import RecordMetadata, TopicPartition

from bridge.kafka.partitioner import CachingPartitioner
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message
from bridge.telemetry import metrics

log = structlog.get_logger(__name__)

OnDone = Callable[[asyncio.Future[Any]], None]
# One record: its future, its done-callback, when it was handed over, what the builder returned
_Record = tuple[asyncio.Future[Any], OnDone | None, float, Any]


class _Batch:
    __slots__ = ("builder", "deadline", "partition", "queued", "records", "settled", "topic")

    def __init__(self, builder: Any, topic: str, partition: int) -> None:
        self.builder = builder
        self.topic = topic
        self.partition = partition
        self.records: list[_Record] = []
        self.queued = False  # on its way to aiokafka (it may still take records, see append)
        self.settled = False  # its records were resolved (acknowledged, failed or expired)
        self.deadline: asyncio.TimerHandle | None = None


class PartitionBatcher:
    """Batch records per (topic, partition) for one started :class:`AIOKafkaProducer`."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        partitioner: CachingPartitioner,
        histogram: Any,
        max_request_size: int,
        timeout_s: float = 30.0,
    ) -> None:
        self._producer = producer
        # A record not acknowledged this long after its batch opened fails with
        # KafkaUnavailable (the record may still reach Kafka: callers treat it as unknown).
        # One timer per batch, not one per record: the callers that do not await (HTTP
        # produce, the ledger, MQTT PUBACKs) get the deadline `send()` had with a timeout.
        self._timeout_s = timeout_s
        self._partitioner = partitioner
        self._histogram = histogram  # the produce-latency histogram child of this acks level
        self._max_request_size = max_request_size
        self._cluster = producer.client.cluster
        self._partitions: dict[str, tuple[list[int], list[int]]] = {}
        self._cluster.add_listener(self._metadata_changed)
        self._open: dict[tuple[str, int], _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def _metadata_changed(self, _cluster: Any) -> None:
        self._partitions.clear()  # partitions are looked up again on the new metadata

    def partitions(self, topic: str) -> tuple[list[int], list[int]] | None:
        """(all, available) partitions of ``topic``; None while its metadata is unknown."""
        known = self._partitions.get(topic)
        if known is None:
            every = self._cluster.partitions_for_topic(topic)
            if not every:
                return None
            available = self._cluster.available_partitions_for_topic(topic) or ()
            known = self._partitions[topic] = (sorted(every), sorted(available))
        return known

    async def wait_for_metadata(self, topic: str) -> None:
        try:
            await self._producer.partitions_for(topic)
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka did not take the record: {exc!r}") from exc

    def append(
        self,
        message: Message,
        on_done: OnDone | None,
        partitions: tuple[list[int], list[int]],
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Add ``message`` to its partition's open batch (the key's, or ``partition``); the
        future of its acknowledgement."""
        key, value, headers = message.key, message.value, list(message.headers)
        if partition is None:
            partition = self._partitioner(key, *partitions)
        elif partition not in partitions[0]:
            raise KafkaUnavailable(f"{message.topic!r} has no partition {partition}")
        which = (message.topic, partition)
        batch = self._open.get(which)
        appended = None
        if batch is not None:
            appended = batch.builder.append(
                timestamp=message.timestamp_ms, key=key, value=value, headers=headers
            )
            if appended is None:  # full, or built by aiokafka's sender: this record starts the next
                del self._open[which]
                if not batch.queued:
                    self._queue(batch)
        if appended is None:
            # Only the first record of a batch can exceed the batch size: check it here.
            self._check_size(key, value, headers)
            batch = self._open_batch(which)
            appended = batch.builder.append(
                timestamp=message.timestamp_ms, key=key, value=value, headers=headers
            )
        assert batch is not None
        future = self._loop.create_future()
        batch.records.append((future, on_done, time.perf_counter(), appended))
        return future

    def _check_size(self, key: bytes | None, value: bytes | None, headers: list[Any]) -> None:
        # send() refuses such a record before queueing it; so does this (Kafka would refuse it)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._max_request_size:
            error = MessageSizeTooLargeError(f"the record is {size} bytes serialized")
            raise KafkaUnavailable(f"Kafka did not take the record: {error!r}")

    def _open_batch(self, which: tuple[str, int]) -> _Batch:
        batch = self._open[which] = _Batch(self._producer.create_batch(), *which)
        batch.deadline = self._loop.call_later(self._timeout_s, self._expire, batch)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_turn)
        return batch

    def _queue(self, batch: _Batch) -> None:
        batch.queued = True
        self._ready.append(batch)
        self._start_flusher()

    def _end_of_turn(self) -> None:
        self._scheduled = False
        if self._flusher is None:  # a busy flusher takes the open batches when it is free
            self._take_open()
            self._start_flusher()

    def _take_open(self) -> None:
        # Queued batches stay open: until aiokafka's sender builds one (when it takes it for a
        # request), records of its partition still join it, as send() appends to the batch
        # waiting in aiokafka's accumulator. Closing it instead would make the next records wait
        # for the request after, one more round trip (measured: 2x the end-to-end p50).
        for batch in self._open.values():
            if not batch.queued:
                batch.queued = True
                self._ready.append(batch)

    def _start_flusher(self) -> None:
        if self._flusher is None and self._ready:
            self._flusher = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        ready = self._ready
        batch: _Batch | None = None
        try:
            while True:
                if not ready:
                    self._take_open()
                    if not ready:
                        break
                batch = ready.popleft()
                await self._send(batch)
                batch = None
        except BaseException as exc:  # cancelled (stopping): nothing waiting may hang
            failed = [batch] if batch is not None else []
            failed += [*ready, *(each for each in self._open.values() if not each.queued)]
            ready.clear()
            error = KafkaUnavailable(f"the producer stopped: {exc!r}")
            for each in failed:
                _fail(each, error)
            raise
        finally:
            self._flusher = None

    async def _send(self, batch: _Batch) -> None:
        try:
            future = await self._producer.send_batch(
                batch.builder, batch.topic, partition=batch.partition
            )
        except Exception as exc:  # KafkaError, or a partition gone from the metadata: this batch
            _fail(batch, exc)
            return
        future.add_done_callback(lambda done: _settle(batch, self._histogram, done))

    def _expire(self, batch: _Batch) -> None:
        """Kafka did not acknowledge ``batch`` in time: its records fail now. The batch stays on
        its way (it may still be stored, as after a timed-out ``send()``) but takes no more
        records, whose futures nobody would resolve."""
        batch.deadline = None
        if self._open.get((batch.topic, batch.partition)) is batch:
            del self._open[(batch.topic, batch.partition)]
        if batch.settled:
            return
        log.warning(
            "producer.batch_expired",
            topic=batch.topic,
            partition=batch.partition,
            records=len(batch.records),
            timeout_s=self._timeout_s,
        )
        error = KafkaUnavailable(f"Kafka did not acknowledge within {self._timeout_s:g} s")
        _resolve_failed(batch, error)

    async def flush(self) -> None:
        """Hand every open batch to aiokafka now (before stopping the producer)."""
        self._take_open()
        self._start_flusher()
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    def close(self) -> None:
        self._cluster.remove_listener(self._metadata_changed)
        if self._flusher is not None:
            self._flusher.cancel()


def _settle(batch: _Batch, histogram: Any, done: asyncio.Future[Any]) -> None:
    """Resolve the records of ``batch`` in order: Kafka acknowledged it, or it failed."""
    if batch.settled:
        return  # expired: its records were answered already
    batch.settled = True
    if batch.deadline is not None:
        batch.deadline.cancel()
        batch.deadline = None
    if done.cancelled():
        _fail(batch, KafkaUnavailable("the batch was cancelled"))
        return
    error = done.exception()
    if error is not None:
        _fail(batch, error)
        return
    base = done.result()  # RecordMetadata of the batch; None with acks=0
    now = time.perf_counter()
    metrics.observe_all(histogram, [now - started for _, _, started, _ in batch.records])
    if base is None:
        for future, on_done, _, _ in batch.records:
            if not future.done():
                future.set_result(None)
            if on_done is not None:
                on_done(future)
        return
    tp = TopicPartition(batch.topic, batch.partition)
    offset, log_time, kind, log_start = base.offset, base.timestamp, base.timestamp_type, None
    log_start = base.log_start_offset
    for future, on_done, _, appended in batch.records:
        # Kafka answers -1 for CreateTime topics: the record's own timestamp stands
        timestamp = appended.timestamp if log_time == -1 else log_time
        if not future.done():
            future.set_result(
                RecordMetadata(
                    batch.topic,
                    batch.partition,
                    tp,
                    offset + appended.offset,
                    timestamp,
                    kind,
                    log_start,
                )
            )
        if on_done is not None:
            on_done(future)


def _fail(batch: _Batch, error: BaseException) -> None:
    batch.builder.close()  # no record may join a batch that will not be sent
    if batch.deadline is not None:
        batch.deadline.cancel()
        batch.deadline = None
    _resolve_failed(batch, error)


def _resolve_failed(batch: _Batch, error: BaseException) -> None:
    batch.settled = True
    for future, on_done, _, _ in batch.records:
        if not future.done():
            future.set_exception(copy.copy(error))
        if on_done is not None:
            on_done(future)
    batch.records = []
