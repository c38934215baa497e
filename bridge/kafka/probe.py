"""Is Kafka answering? A readiness probe with its own small client.

It never uses the producer's client, so a probe cannot queue behind produce traffic, and it
remembers the answer for a second, so a probe storm costs Kafka at most one metadata request per
second per process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from bridge.kafka.client_settings import client_options
from bridge.model.config import KafkaSettings

PROBE_CACHE_S = 1.0
PROBE_TIMEOUT_S = 3.0


@dataclass(slots=True)
class Probe:
    ok: bool
    detail: str
    at: float


class KafkaProbe:
    """Is Kafka answering metadata requests? Cached for :data:`PROBE_CACHE_S`."""

    def __init__(self, settings: KafkaSettings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self._client: AIOKafkaClient | None = None
        self._last: Probe | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> Probe:
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last.at < PROBE_CACHE_S:
                return self._last
            self._last = await self._probe()
            return self._last

    async def _probe(self) -> Probe:
        try:
            if self._client is None:
                options = client_options(self.settings, self.bootstrap, "readyz")
                client = AIOKafkaClient(**options)
                await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT_S)
                self._client = client
            metadata = await asyncio.wait_for(self._client.fetch_all_metadata(), PROBE_TIMEOUT_S)
            brokers = len(metadata.brokers())
        except (KafkaError, OSError, TimeoutError) as exc:
            return Probe(False, f"unreachable: {exc!r}"[:300], time.monotonic())
        return Probe(True, f"{brokers} broker(s)", time.monotonic())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
