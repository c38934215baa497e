"""The one Kafka producer of a bridge process (one per acks level, created on first use)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.config import KafkaSettings
from bridge.errors import KafkaUnavailable
from bridge.kafka_client import client_options
from bridge.message import Message, Produced
from bridge.metrics import KAFKA_PRODUCE_SECONDS

log = structlog.get_logger(__name__)
_ACKS = {"0": 0, "1": 1, "all": "all"}


class Producer:
    def __init__(self, settings: KafkaSettings, bootstrap: str) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._producers: dict[str, AIOKafkaProducer] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self.timeout_s = settings.request_timeout_ms / 1000

    async def start(self) -> None:
        await self._producer(self._settings.acks)

    async def stop(self) -> None:
        """Flush everything in flight, then close."""
        producers, self._producers = self._producers, {}
        for producer in producers.values():
            try:
                await producer.stop()
            except KafkaError as exc:
                log.warning("producer.stop_failed", error=str(exc))

    async def _producer(self, acks: str) -> AIOKafkaProducer:
        producer = self._producers.get(acks)
        if producer is not None:
            return producer
        lock = self._starting.setdefault(acks, asyncio.Lock())
        async with lock:
            if acks not in self._producers:
                producer = AIOKafkaProducer(
                    **client_options(self._settings, self._bootstrap, f"producer-acks{acks}"),
                    acks=_ACKS[acks],
                    linger_ms=0,
                    # Idempotence needs InitProducerId, which the embedded broker lacks;
                    # duplicates after retries are handled by correlation ids instead.
                    enable_idempotence=False,
                    max_request_size=4 * 1024 * 1024,
                )
                try:
                    await asyncio.wait_for(producer.start(), self.timeout_s)
                except (KafkaError, TimeoutError, OSError) as exc:
                    await producer.stop()
                    raise KafkaUnavailable(f"cannot reach Kafka: {exc}") from exc
                self._producers[acks] = producer
        return self._producers[acks]

    async def send(self, message: Message, acks: str | None = None) -> Produced:
        """Produce and wait for Kafka's acknowledgement (per ``acks``)."""
        acks = acks or self._settings.acks
        producer = await self._producer(acks)
        started = time.perf_counter()
        try:
            future = await producer.send(
                message.topic,
                value=message.value,
                key=message.key,
                headers=list(message.headers),
                timestamp_ms=message.timestamp_ms,
            )
            metadata = await asyncio.wait_for(future, self.timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
        KAFKA_PRODUCE_SECONDS.labels(acks).observe(time.perf_counter() - started)
        return Produced(metadata.topic, metadata.partition, metadata.offset, metadata.timestamp)

    async def submit(self, message: Message, acks: str | None = None) -> asyncio.Future[Any]:
        """Hand ``message`` to the producer; return the future of Kafka's acknowledgement.

        Unlike :meth:`send` this does not wait for the acknowledgement, so a front-end that
        must answer in arrival order (MQTT PUBACKs) can keep many records in flight and
        answer each when its future is done. Raises :class:`KafkaUnavailable` if the record
        cannot even be queued.
        """
        producer = await self._producer(acks or self._settings.acks)
        try:
            return await producer.send(
                message.topic,
                value=message.value,
                key=message.key,
                headers=list(message.headers),
                timestamp_ms=message.timestamp_ms,
            )
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka did not take the record: {exc!r}") from exc
