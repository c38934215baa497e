"""The operations listener (``[listeners.admin]``, default 127.0.0.1:9090), apart from client
traffic so it can stay private: Prometheus ``/metrics``, ``/healthz`` (the process is alive) and
``/readyz`` (Kafka answers, every listener is serving, not draining).

Readiness asks Kafka for cluster metadata with its own small client (never the producer's, so a
probe cannot queue behind produce traffic) and remembers the answer for a second, so a probe
storm costs Kafka at most one request per second per process.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from quart import Response

from bridge.kafka.client_settings import client_options
from bridge.model.config import ListenerSettings
from bridge.telemetry.metrics import exposition
from bridge.web.listener import WebListener

if TYPE_CHECKING:
    from bridge.process.runtime import Bridge

log = structlog.get_logger(__name__)
PROBE_CACHE_S = 1.0
PROBE_TIMEOUT_S = 3.0
WORKER_ENV = "EDGEBRIDGE_WORKER"


@dataclass(slots=True)
class Probe:
    ok: bool
    detail: str
    at: float


class KafkaProbe:
    """Is Kafka answering metadata requests? Cached for :data:`PROBE_CACHE_S`."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
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
                options = client_options(self.bridge.config.kafka, self.bridge.bootstrap, "readyz")
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


class AdminListener:
    def __init__(self, bridge: Bridge, settings: ListenerSettings) -> None:
        self.bridge = bridge
        self.web = WebListener(settings, f"{bridge.config.bridge_name}-admin")
        self.kafka = KafkaProbe(bridge)
        self.web.app.add_url_rule("/metrics", "metrics", self.metrics)
        self.web.app.add_url_rule("/healthz", "healthz", self.healthz)
        self.web.app.add_url_rule("/readyz", "readyz", self.readyz)

    @property
    def port(self) -> int:
        return self.web.port

    async def start(self, reuse_port: bool = False) -> None:
        await self.web.start(reuse_port)
        log.info("listener.started", protocol="admin", host=self.web.settings.host, port=self.port)

    async def stop(self) -> None:
        await self.web.stop()
        await self.kafka.close()

    async def metrics(self) -> Response:
        body, content_type = exposition()
        return Response(body, content_type=content_type)

    async def healthz(self) -> dict[str, Any]:
        return {"status": "alive", "pid": os.getpid(), "worker": os.environ.get(WORKER_ENV)}

    async def readyz(self) -> tuple[dict[str, Any], int]:
        checks = {"kafka": await self.kafka.check(), "listeners": self._listeners()}
        ready = all(check.ok for check in checks.values())
        body = {
            "ready": ready,
            "pid": os.getpid(),
            "worker": os.environ.get(WORKER_ENV),
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
        }
        return body, 200 if ready else 503

    def _listeners(self) -> Probe:
        bridge = self.bridge
        now = time.monotonic()
        if bridge.draining:
            return Probe(False, "draining", now)
        if not bridge.started:
            return Probe(False, "starting", now)
        if bridge.web is not None and not bridge.web.serving:
            return Probe(False, "http listener stopped", now)
        for frontend in bridge.frontends:
            # Optional front-end hook: ``ready`` (bool or method) false while its listener is down.
            ready = getattr(frontend, "ready", True)
            if callable(ready):
                ready = ready()
            if not ready:
                return Probe(False, f"{frontend.name} not ready", now)
        return Probe(True, "serving", now)
