"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kafka_faults import FaultyKafka, RetentionProxy


@pytest.fixture
async def retention() -> AsyncIterator[tuple[FaultyKafka, RetentionProxy]]:
    proxy = RetentionProxy()
    kafka = await FaultyKafka(proxy=proxy).start()
    try:
        yield kafka, proxy
    finally:
        await kafka.stop()
