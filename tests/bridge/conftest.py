"""Fixtures of the core's tests: a started producer, and a hub beside it, on the embedded broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.kafka.hub import Hub
from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings


@pytest.fixture
async def producer(kafka_bootstrap: str, kafka_settings: KafkaSettings) -> AsyncIterator[Producer]:
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def kafka(
    producer: Producer, kafka_bootstrap: str, kafka_settings: KafkaSettings
) -> AsyncIterator[tuple[Producer, Hub]]:
    hub = Hub(kafka_settings, kafka_bootstrap)
    yield producer, hub
    await hub.stop()
