"""A running bridge process: Kafka (configured or embedded), producer, hub, listeners, front-ends.

Front-ends are found through the ``edgebridge.frontends`` entry point group, so the core never
imports a protocol package. A front-end is any object with::

    name: str
    def topics(self) -> list[TopicSpec]     # internal topics it needs (sessions, retained...)
    async def start(self) -> None           # after Kafka is ready, before listeners open
    async def stop(self) -> None            # stop accepting, close its connections

constructed as ``Frontend(bridge)``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from importlib.metadata import entry_points
from typing import Any, Protocol

import structlog

from bridge.edge.guard import Guard
from bridge.kafka.client_settings import check_connection
from bridge.kafka.embedded_broker import EmbeddedBroker
from bridge.kafka.hub import Hub
from bridge.kafka.producer import Producer
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import Config, TopicSpec
from bridge.model.routing import RouteTable
from bridge.telemetry.metrics import BRIDGE_STARTS
from bridge.web.admin_listener import AdminListener
from bridge.web.listener import WebListener

log = structlog.get_logger(__name__)
FRONTEND_GROUP = "edgebridge.frontends"
STOP_TIMEOUT_S = 20.0  # longest graceful drain before the process exits regardless


class Frontend(Protocol):
    name: str

    def topics(self) -> list[TopicSpec]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def available_frontends() -> dict[str, Any]:
    """Front-end classes by name, as installed."""
    found: dict[str, Any] = {}
    for entry in entry_points(group=FRONTEND_GROUP):
        try:
            found[entry.name] = entry.load()
        except ImportError as exc:
            # A front-end that does not import is a broken install: starting without it would
            # serve nothing on its paths and say so only in a log line nobody reads.
            log.error("frontend.unavailable", frontend=entry.name, error=str(exc))
            raise RuntimeError(f"front-end {entry.name!r} cannot be loaded: {exc}") from exc
    return found


class Bridge:
    def __init__(
        self, config: Config, frontends: list[str] | None = None, reuse_port: bool = False
    ) -> None:
        self.config = config
        self.routes = RouteTable.from_config(config)
        self.guard = Guard(config.guard_settings)
        self.reuse_port = reuse_port
        self.wanted_frontends = frontends
        self.embedded: EmbeddedBroker | None = None
        self.bootstrap = "" if config.kafka.embedded else config.kafka.bootstrap
        self.producer: Producer | None = None
        self.hub: Hub | None = None
        self.web: WebListener | None = None
        self.frontends: list[Frontend] = []
        self.admin: AdminListener | None = None
        self.started = False
        self.draining = False  # stopping: /readyz says no so load balancers stop sending
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        settings = self.config.kafka
        if self.guard.settings is not None and self.guard.settings.demo_secret:
            log.warning(
                "guard.demo_secret",
                detail="tokens are verified with the public demo secret; set EDGEBRIDGE_JWT_SECRET",
            )
        if settings.embedded:
            self.embedded = EmbeddedBroker()
            await self.embedded.start()
            self.bootstrap = self.embedded.bootstrap
        log.info(
            "kafka.bootstrap",
            bootstrap=self.bootstrap,
            embedded=settings.embedded,
            security=settings.security.describe(),
        )
        if not settings.embedded:
            # A wrong password, an untrusted certificate or an unreachable bootstrap ends the
            # start here with its cause (KafkaConnectError), not in a client's retry loop.
            await check_connection(settings, self.bootstrap)
        if self.config.http_listener is not None:
            self.web = WebListener(self.config.http_listener, self.config.bridge_name)
        classes = available_frontends()
        for name, cls in classes.items():
            if self.wanted_frontends is not None and name not in self.wanted_frontends:
                continue
            self.frontends.append(cls(self))
        specs = dict(settings.topics)
        for route in self.config.routes:
            specs.setdefault(route.topic, TopicSpec(route.topic))
            if route.dead_letter is not None:
                specs.setdefault(route.dead_letter, TopicSpec(route.dead_letter))
        for frontend in self.frontends:
            for spec in frontend.topics():
                specs.setdefault(spec.name, spec)
        await ensure_topics(settings, self.bootstrap, specs.values())
        self.producer = Producer(settings, self.bootstrap)
        await self.producer.start()
        self.hub = Hub(settings, self.bootstrap)
        for spec in specs.values():
            if spec.compact:
                self.hub.tables.add(spec.name)
        if self.web is not None:
            self.web.bind(self.reuse_port)  # its address is known to front-ends as they start
        for frontend in self.frontends:
            await frontend.start()
        if self.web is not None:
            await self.web.start(self.reuse_port)
        if self.config.admin_listener is not None:
            self.admin = AdminListener(self, self.config.admin_listener)
            await self.admin.start(self.reuse_port)
        self.started = True
        BRIDGE_STARTS.inc()
        log.info(
            "bridge.started",
            frontends=[f.name for f in self.frontends],
            routes=len(self.config.routes),
            http_port=self.web.port if self.web else None,
            admin_port=self.admin.port if self.admin else None,
        )

    async def stop(self) -> None:
        """Stop accepting, close client connections, flush the producer, close Kafka."""
        log.info("bridge.stopping")
        self.draining = True
        if self.web is not None:
            await self.web.stop()
        for frontend in reversed(self.frontends):
            try:
                await frontend.stop()
            except Exception:
                log.exception("frontend.stop_failed", frontend=frontend.name)
        if self.producer is not None:
            await self.producer.stop()
        if self.hub is not None:
            await self.hub.stop()
        if self.admin is not None:
            await self.admin.stop()  # last: /readyz answers "draining" until the end
        if self.embedded is not None:
            await self.embedded.stop()
        self._stopped.set()
        log.info("bridge.stopped")

    def frontend(self, name: str) -> Any:
        return next(f for f in self.frontends if f.name == name)

    @property
    def kafka(self) -> tuple[Producer, Hub]:
        assert self.producer is not None and self.hub is not None, "bridge not started"
        return self.producer, self.hub

    async def run_until_signal(self) -> None:
        """Start, then run until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
        finally:
            try:
                await asyncio.wait_for(self.stop(), STOP_TIMEOUT_S)
            except TimeoutError:
                # A drain wedged on an unreachable Kafka (e.g. the supervisor and its embedded
                # broker were SIGKILLed) must never leave this process behind.
                log.error("bridge.stop_timeout", seconds=STOP_TIMEOUT_S)
                os._exit(1)
