"""Fixtures for the MQTT front-end tests: real bridges on the real embedded broker, real clients.

``mqtt_bridge(routes, **options)`` starts an in-process bridge with the MQTT front-end and the
given ``[listeners.mqtt]`` options; ``paho(port, ...)`` makes a paho-mqtt client whose blocking
calls run in a thread (the bridge shares the test's event loop); ``kafka_records(topic, n)``
reads a Kafka topic back with a plain aiokafka consumer. Helpers live in mqtt_support.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_support import REPO, TIMEOUT, Paho, bridge_config, unique

from bridge.model.config import parse_config
from bridge.process.runtime import Bridge


@pytest.fixture
async def mqtt_bridge(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[Bridge]]]:
    started: list[Bridge] = []

    async def start(routes: str, http: bool = True, **options: Any) -> Bridge:
        text = bridge_config(routes, **options)
        if not http:
            text = text.replace(
                '[listeners.http]\nhost = "127.0.0.1"\nport = 0',
                "[listeners.http]\nenabled = false",
            )
        config = parse_config(
            text, REPO / "test-routing.toml", {"KAFKA_BOOTSTRAP": kafka_bootstrap}
        )
        bridge = Bridge(config, frontends=["mqtt"])
        await bridge.start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in reversed(started):
        await bridge.stop()


@pytest.fixture
def kafka_records(kafka_bootstrap: str) -> Callable[..., Awaitable[list[Any]]]:
    async def read(topic: str, count: int, timeout: float = TIMEOUT) -> list[Any]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or {0}
            consumer.assign([TopicPartition(topic, p) for p in partitions])
            await consumer.seek_to_beginning()
            found: list[Any] = []
            deadline = asyncio.get_running_loop().time() + timeout
            while len(found) < count and asyncio.get_running_loop().time() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    found.extend(records)
            return found
        finally:
            await consumer.stop()

    return read


@pytest.fixture
async def paho() -> AsyncIterator[Callable[..., Paho]]:
    made: list[Paho] = []

    def make(port: int, client_id: str = "", **kwargs: Any) -> Paho:
        client = Paho(port, client_id or unique("c"), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception:  # already gone
            pass
