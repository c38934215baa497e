"""Fixtures that start real things: the embedded Kafka broker (once per session) and bridges.

Set KAFKA_BOOTSTRAP to run the suite against an existing Kafka instead of the embedded broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from bridge.kafka.embedded_broker import EmbeddedBroker
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    return KafkaSettings(bootstrap="external", fetch_max_wait_ms=10, request_timeout_ms=5000)


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_topic(
    kafka_bootstrap: str, kafka_settings: KafkaSettings
) -> AsyncIterator[TopicFactory]:
    """Create a fresh, uniquely named topic: ``await new_topic(partitions=3, compact=False)``."""

    async def create(partitions: int = 1, compact: bool = False, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await ensure_topics(
            kafka_settings, kafka_bootstrap, [TopicSpec(name, partitions, 1, compact)]
        )
        return name

    yield create


@pytest.fixture
async def bridge_factory(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[object]]]:
    """Start in-process bridges: ``await bridge_factory(routes_toml, frontends=["sse"])``.

    Every bridge started is stopped at the end of the test.
    """
    from harness import start_bridge

    started = []

    async def factory(
        routes_toml: str, frontends: list[str] | None = None, **kwargs: object
    ) -> object:
        bridge = await start_bridge(routes_toml, kafka_bootstrap, frontends, **kwargs)  # type: ignore[arg-type]
        started.append(bridge)
        return bridge

    yield factory
    for bridge in reversed(started):
        await bridge.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a Kafka broker ``broker``, so ``make test-fast`` (``-m "not
    broker"``) runs the rest in seconds: tests whose fixtures reach the session's broker, and
    modules that start their own (they set ``pytestmark = pytest.mark.broker``)."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
