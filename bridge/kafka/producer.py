"""The Kafka producers of a bridge process: one per (acks, linger) pair, created on first use.

Every producer shares one :class:`~bridge.partitioner.CachingPartitioner` (Kafka's default
partitioning, the key's hash cached). ``linger_ms`` lets a caller whose records nobody waits for
(MQTT QoS 0) trade a few milliseconds of latency for bigger batches: fewer produce requests,
fewer socket writes. It never changes *when* a record counts as produced: a future still
completes only on Kafka's acknowledgement.

Records without a linger go through aiokafka's batch API (:mod:`bridge.kafka.batch_producer`): the
records of one loop turn become one batch per partition, about half the CPU of a per-record
``send()``. ``send()`` and ``submit()`` share that path, so records of one acks level keep their
order whichever of the two produced them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.kafka.batch_producer import PartitionBatcher
from bridge.kafka.client_settings import client_options
from bridge.kafka.partitioner import CachingPartitioner
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message, Produced
from bridge.telemetry.metrics import KAFKA_PRODUCE_SECONDS

log = structlog.get_logger(__name__)
_ACKS = {"0": 0, "1": 1, "all": "all"}
MAX_REQUEST_SIZE = 4 * 1024 * 1024


class Producer:
    def __init__(self, settings: KafkaSettings, bootstrap: str) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._producers: dict[tuple[str, int], AIOKafkaProducer] = {}
        self._starting: dict[tuple[str, int], asyncio.Lock] = {}
        self._partitioner = CachingPartitioner()
        self._latency: dict[str, Any] = {}
        self._batchers: dict[str, PartitionBatcher] = {}
        self.timeout_s = settings.request_timeout_ms / 1000

    async def start(self) -> None:
        await self._producer(self._settings.acks)

    async def stop(self) -> None:
        """Flush everything in flight, then close."""
        batchers, self._batchers = self._batchers, {}
        for batcher in batchers.values():
            await batcher.flush()
            batcher.close()
        producers, self._producers = self._producers, {}
        for producer in producers.values():
            try:
                await producer.stop()
            except KafkaError as exc:
                log.warning("producer.stop_failed", error=str(exc))

    async def _producer(self, acks: str, linger_ms: int = 0) -> AIOKafkaProducer:
        which = (acks, linger_ms)
        producer = self._producers.get(which)
        if producer is not None:
            return producer
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, not {linger_ms}")
        lock = self._starting.setdefault(which, asyncio.Lock())
        async with lock:
            if which not in self._producers:
                role = f"producer-acks{acks}" + (f"-linger{linger_ms}" if linger_ms else "")
                producer = AIOKafkaProducer(
                    **client_options(self._settings, self._bootstrap, role),
                    acks=_ACKS[acks],
                    linger_ms=linger_ms,
                    partitioner=self._partitioner,
                    # Idempotence needs InitProducerId, which the embedded broker lacks;
                    # duplicates after retries are handled by correlation ids instead.
                    enable_idempotence=False,
                    max_request_size=MAX_REQUEST_SIZE,
                    max_batch_size=self._settings.producer_batch_bytes,
                )
                try:
                    await asyncio.wait_for(producer.start(), self.timeout_s)
                except (KafkaError, TimeoutError, OSError) as exc:
                    await producer.stop()
                    raise KafkaUnavailable(f"cannot reach Kafka: {exc}") from exc
                self._producers[which] = producer
                if not linger_ms:
                    self._batchers[acks] = PartitionBatcher(
                        producer,
                        self._partitioner,
                        self._histogram(acks),
                        MAX_REQUEST_SIZE,
                        self.timeout_s,
                    )
        return self._producers[which]

    def _histogram(self, acks: str) -> Any:
        # labels() takes a lock and hashes its arguments: per record that is measurable
        child = self._latency.get(acks)
        if child is None:
            child = self._latency[acks] = KAFKA_PRODUCE_SECONDS.labels(acks)
        return child

    async def send(
        self, message: Message, acks: str | None = None, partition: int | None = None
    ) -> Produced:
        """Produce and wait for Kafka's acknowledgement (per ``acks``). ``partition``: this
        partition instead of the key's (a caller that hashed the key already, see
        :meth:`submit_now`)."""
        # The common case without the submit() coroutine and without a timer: the batcher
        # fails a record its batch did not get acknowledged within timeout_s.
        future = self.submit_now(message, acks, partition=partition)
        try:
            if future is None:
                future = await self.submit(message, acks, partition=partition)
                async with asyncio.timeout(self.timeout_s):
                    metadata = await future
            else:
                metadata = await future
        except (KafkaError, KafkaUnavailable, TimeoutError) as exc:
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
        return Produced(metadata.topic, metadata.partition, metadata.offset, metadata.timestamp)

    def submit_now(
        self,
        message: Message,
        acks: str | None = None,
        on_done: Callable[[asyncio.Future[Any]], None] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any] | None:
        """:meth:`submit` without a linger and without a coroutine, when nothing needs waiting
        for (the producer of ``acks`` started, the topic's partitions known): the future of
        Kafka's acknowledgement, or None (then ``await submit(...)``). A coroutine per record
        was ~4 % of MQTT ingest. Raises :class:`KafkaUnavailable` as :meth:`submit` does.

        ``partition``: produce to this partition, not the key's (as ``send(partition=)``);
        for a caller that owns a partition and hashed the key already (the ledger). Not taken
        from ``message.partition``: a record read back and produced elsewhere carries its old
        partition there."""
        batcher = self._batchers.get(acks or self._settings.acks)
        if batcher is None:
            return None
        partitions = batcher.partitions(message.topic)
        if partitions is None:
            return None
        return batcher.append(message, on_done, partitions, partition)

    async def submit(
        self,
        message: Message,
        acks: str | None = None,
        linger_ms: int = 0,
        on_done: Callable[[asyncio.Future[Any]], None] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Hand ``message`` to the producer; return the future of Kafka's acknowledgement.

        Unlike :meth:`send` this does not wait for the acknowledgement, so a front-end that
        must answer in arrival order (MQTT PUBACKs) can keep many records in flight and
        answer each when its future is done. Raises :class:`KafkaUnavailable` if the record
        cannot even be queued. ``linger_ms`` > 0 lets the record wait that long for company in
        its batch (see the module docstring); records of one (acks, linger) pair keep their order.
        ``on_done(future)`` runs when the future is done, in the same callback as the latency
        histogram: each done-callback of a future is one more event-loop handle per record.
        """
        acks = acks or self._settings.acks
        if not linger_ms:
            ready = self.submit_now(message, acks, on_done, partition)
            if ready is None:  # the producer's start, or the topic's metadata, first
                if acks not in self._batchers:
                    await self._producer(acks)
                batcher = self._batchers[acks]
                if batcher.partitions(message.topic) is None:
                    await batcher.wait_for_metadata(message.topic)
                ready = self.submit_now(message, acks, on_done, partition)
                if ready is None:
                    raise KafkaUnavailable(f"no partitions known for {message.topic!r}")
            return ready
        # the started producer without a coroutine call: this runs once per MQTT publish
        producer = self._producers.get((acks, linger_ms)) or await self._producer(acks, linger_ms)
        started = time.perf_counter()
        try:
            future = await producer.send(
                message.topic,
                value=message.value,
                key=message.key,
                partition=partition,
                headers=list(message.headers),
                timestamp_ms=message.timestamp_ms,
            )
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka did not take the record: {exc!r}") from exc
        # Same histogram as send(): the latency is known only when Kafka acknowledges.
        future.add_done_callback(partial(_observe_latency, self._histogram(acks), started, on_done))
        return future


def _observe_latency(
    histogram: Any,
    started: float,
    on_done: Callable[[asyncio.Future[Any]], None] | None,
    future: asyncio.Future[Any],
) -> None:
    if not future.cancelled() and future.exception() is None:
        histogram.observe(time.perf_counter() - started)
    if on_done is not None:
        on_done(future)
