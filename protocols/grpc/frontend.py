"""The gRPC front-end (issue 17): partners and services reach routes through ``edgebridge.v1.Bridge``.

A ``grpcio`` aio server in the bridge's event loop, on ``[listeners.grpc]`` (TLS with
``tls_cert``/``tls_key``), serving the generic Bridge service (protocols/grpc/service.py) for every
route with a ``[routes.grpc]`` table, plus the standard health (``grpc.health.v1.Health``) and
reflection (``grpc.reflection.v1alpha`` / ``v1``) services, so ``grpcurl`` and
``grpc_health_probe`` work without a ``.proto`` at hand.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bridge.edge.idempotency import IdempotencyStore
from bridge.kafka.replies import ReplyFollower
from bridge.model.advertise import advertised_address
from bridge.model.config import TopicSpec
from bridge.process.runtime import Bridge
from protocols.grpc.idempotency import Forwarder, rebuild_with
from protocols.grpc.options import GrpcListenerOptions, GrpcRouteOptions
from protocols.grpc.service import SERVICE, BridgeService

log = structlog.get_logger(__name__)
STOP_GRACE_S = 2.0


class GrpcFrontend:
    name = "grpc"

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.settings = bridge.config.grpc_listener
        self.listener = GrpcListenerOptions.of(self.settings.options if self.settings else {})
        self.routes = {r.name: r for r in bridge.routes.routes if r.grpc is not None}
        self.reply_topics = sorted(
            {
                topic
                for r in self.routes.values()
                if (topic := GrpcRouteOptions.of(r.grpc or {}).reply_topic)
            }
        )
        self.server: grpc.aio.Server | None = None
        self.service: BridgeService | None = None
        self.health: health.aio.HealthServicer | None = None
        self.followers: dict[str, ReplyFollower] = {}
        self.port: int | None = None
        self.route_options = {n: GrpcRouteOptions.of(r.grpc or {}) for n, r in self.routes.items()}
        self.idempotent = self.settings is not None and any(
            o.idempotency != "off" for o in self.route_options.values()
        )
        self.store: IdempotencyStore | None = None
        self.forwarder: Forwarder | None = None

    def topics(self) -> list[TopicSpec]:
        specs = [TopicSpec(topic) for topic in self.reply_topics]
        if self.idempotent:
            # compact: the newest state per key; delete: records older than every route's
            # expiry (plus an hour) decide nothing any more.
            ttl_s = max(o.idempotency_ttl_s for o in self.route_options.values())
            config = {
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int((ttl_s + 3600) * 1000)),
            }
            listener = self.listener
            specs.append(
                TopicSpec(
                    listener.idempotency_topic, listener.idempotency_partitions, 1, True, config
                )
            )
        return specs

    async def start(self) -> None:
        settings = self.settings
        if settings is None:
            if self.routes:
                log.warning("grpc.no_listener", routes=sorted(self.routes))
            return
        producer, hub = self.bridge.kafka
        for route in self.routes.values():
            if GrpcRouteOptions.of(route.grpc or {}).start == "snapshot":
                hub.tables.add(route.topic)  # its feed keeps the latest value per key
        for topic in self.reply_topics:
            follower = ReplyFollower(hub, topic)
            await follower.start()
            self.followers[topic] = follower
        self.service = BridgeService(
            self.bridge.guard,
            self.routes,
            producer,
            hub,
            self.followers,
            self.listener.max_queued,
        )
        self.service.config = self.bridge.config
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.listener.max_message_bytes),
                ("grpc.max_concurrent_streams", self.listener.max_concurrent_streams),
                ("grpc.so_reuseport", 1 if self.bridge.reuse_port else 0),
            ]
        )
        server.add_generic_rpc_handlers((self.service.handler(), *self.service.bound_handlers()))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{settings.host}:{settings.port}"
        if self.listener.tls_cert and self.listener.tls_key:
            base = self.bridge.config.path.parent
            key = (base / Path(self.listener.tls_key)).read_bytes()
            cert = (base / Path(self.listener.tls_cert)).read_bytes()
            self.port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            self.port = server.add_insecure_port(address)
        if self.idempotent:
            await self._start_ledger(settings.host)
        await server.start()
        self.server = server
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "grpc.listening",
            host=settings.host,
            port=self.port,
            tls=bool(self.listener.tls_cert),
            routes=sorted(self.routes),
        )

    async def _start_ledger(self, host: str) -> None:
        """The idempotency ledger, once the port is known: other instances forward the calls
        whose keys this one owns to the advertised address."""
        assert self.service is not None and self.port is not None
        producer, _ = self.bridge.kafka
        listener = self.listener
        address = advertised_address(listener.advertise or "", host, self.port)
        if ":" not in address.rsplit("]", 1)[-1]:
            address = f"{address}:{self.port}"
        root = None
        if listener.tls_cert:
            root = (self.bridge.config.path.parent / Path(listener.tls_cert)).read_bytes()
        self.forwarder = Forwarder(address, root)
        ttl_s = max(o.idempotency_ttl_s for o in self.route_options.values())
        self.store = IdempotencyStore(
            producer,
            self.bridge.config.kafka,
            self.bridge.bootstrap,
            address,
            rebuild_with(self.service.replies),
            listener.idempotency_topic,
            session_timeout_ms=listener.idempotency_session_timeout_ms,
            ttl_s=ttl_s,
        )
        await self.store.start()
        self.service.store = self.store
        self.service.forwarder = self.forwarder

    async def stop(self) -> None:
        if self.health is not None:
            # Load balancers watching health see NOT_SERVING while the calls drain.
            with contextlib.suppress(Exception):
                await self.health.enter_graceful_shutdown()
        if self.service is not None:
            self.service.drop_streams()
        if self.server is not None:
            await self.server.stop(STOP_GRACE_S)
        for follower in self.followers.values():
            follower.stop()
        if self.store is not None:
            await self.store.stop()
        if self.forwarder is not None:
            await self.forwarder.close()
