"""The operations listener (``[listeners.admin]``, default 127.0.0.1:9090), apart from client
traffic so it can stay private: Prometheus ``/metrics``, ``/healthz`` (the process is alive) and
``/readyz`` (Kafka answers, every listener is serving, not draining).

Readiness asks Kafka through :class:`bridge.kafka.probe.KafkaProbe` (its own small client, an
answer remembered for a second). The listener knows the process only through
:class:`ServedProcess`, so the web layer never imports the process layer that builds it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import structlog
from quart import Response

from bridge.kafka.probe import KafkaProbe, Probe
from bridge.model.config import Config, ListenerSettings
from bridge.telemetry.metrics import exposition
from bridge.web.listener import WebListener

log = structlog.get_logger(__name__)
WORKER_ENV = "EDGEBRIDGE_WORKER"


class ServedProcess(Protocol):
    """What readiness needs to know of the running process (a :class:`~bridge.process.runtime.Bridge`)."""

    @property
    def config(self) -> Config: ...
    @property
    def bootstrap(self) -> str: ...
    @property
    def draining(self) -> bool: ...
    @property
    def started(self) -> bool: ...
    @property
    def web(self) -> WebListener | None: ...
    @property
    def frontends(self) -> Sequence[Any]: ...


class AdminListener:
    def __init__(self, bridge: ServedProcess, settings: ListenerSettings) -> None:
        self.bridge = bridge
        self.web = WebListener(settings, f"{bridge.config.bridge_name}-admin")
        self.kafka = KafkaProbe(bridge.config.kafka, bridge.bootstrap)
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
