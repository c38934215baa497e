"""The MQTT front-end: listeners (TCP, TLS, WebSocket), the client registry, and what all
connections of this instance share (sessions, retained messages, wills, shared groups, the
per-record caches that make fan-out cheap).

Public API (see docs/architecture.md, "Front-end contract")::

    frontend = MqttFrontend(bridge)
    frontend.topics()        # edgebridge.mqtt.sessions, edgebridge.mqtt.retained (compacted)
    await frontend.start()   # .port is the bound TCP port (0 in the config picks one)
    await frontend.stop()    # DISCONNECT 0x8B to MQTT 5 clients, sessions saved
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import structlog

from bridge.kafka.hub import Start
from bridge.model.config import Route, TopicSpec
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message
from bridge.model.routing import Match
from bridge.model.topic_filter import filter_matches
from bridge.process.runtime import Bridge
from bridge.telemetry import metrics
from bridge.web.listener import LISTEN_BACKLOG, listening_socket

from . import records
from .client import Client
from .codec import PreparedPublish, prepare_publish
from .connection import State
from .instances import Instances
from .options import MqttOptions
from .packets import EMPTY_PROPERTIES, ReasonCode
from .retained import RetainedMessages
from .session_manager import SessionManager
from .shared import REFRESH_S, Membership
from .subscriptions import SharedGroup, Subscription, Tracker
from .transport import TcpProtocol, websocket_handler
from .wills import Wills

log = structlog.get_logger(__name__)
PROTOCOL = "mqtt"
TICK_S = 0.25
ROUTE_CACHE = 65_536
_MISSING = object()


class InboundCounter:
    """Messages in (and their bytes) of one route: summed per publish, added to the metrics once
    per loop turn, because taking the metrics' locks for each of thousands of publishes a second
    is measurable (as for deliveries). Flushed before the turn's PUBACKs are written."""

    __slots__ = ("_bytes", "_count", "_metric_bytes", "_metric_messages", "_scheduled")

    def __init__(self, route: str) -> None:
        self._metric_messages = metrics.MESSAGES_IN.labels(route, PROTOCOL)
        self._metric_bytes = metrics.BYTES_IN.labels(route, PROTOCOL)
        self._count = self._bytes = 0
        self._scheduled = False

    def add(self, size: int) -> None:
        self._count += 1
        self._bytes += size
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._count:
            self._metric_messages.inc(self._count)
            self._metric_bytes.inc(self._bytes)
            self._count = self._bytes = 0


class MqttFrontend:
    name = "mqtt"

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.settings = bridge.config.mqtt_listener
        self.options = MqttOptions.from_options(self.settings.options if self.settings else {})
        self.limits = self.options.limits()
        self.max_write_buffer = self.options.max_write_buffer
        self.port: int | None = None
        self.clients: dict[str, Client] = {}  # connected, by client id
        self.connections: set[Client] = set()  # every open connection, also before CONNECT
        self.groups: dict[tuple[str, str], SharedGroup] = {}
        self.wills = Wills(self)
        self.instance = uuid.uuid4().hex[:12]  # this process: shared groups, wills, heartbeats
        self.instances = Instances(self.instance, self.options.instance_timeout_s)
        self.membership: Membership
        self.sessions: SessionManager
        self.retained: RetainedMessages
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._dirty: set[Client] = set()
        self._flush_scheduled = False
        self._resolved: tuple[Message | None, tuple[Route, str] | None] = (None, None)
        self._encoders: dict[tuple[int, int, int | None], PreparedPublish] = {}
        self._encoders_for: Message | None = None
        self._topics_of_routes: dict[frozenset[str], list[str]] = {}
        self._routes_of: dict[str, object] = {}
        self._body_free: dict[str, bool] = {}
        self._matches: dict[tuple[str, str], bool] = {}
        self._inbound: dict[str, InboundCounter] = {}
        self._delivered: dict[str, list[int]] = {}  # route -> [deliveries, bytes] not yet counted

    # -- lifecycle --------------------------------------------------------------------------------

    def topics(self) -> list[TopicSpec]:
        return [
            TopicSpec(self.options.sessions_topic, 1, 1, compact=True),
            TopicSpec(self.options.retained_topic, 1, 1, compact=True),
        ]

    async def start(self) -> None:
        self.sessions = SessionManager(self, self.options.sessions_topic)
        self.retained = RetainedMessages(self, self.options.retained_topic)
        await self.sessions.open()
        self.membership = Membership(self.sessions.store, self.instance)
        self.membership.load()
        await self.instances.beat(self.sessions.store)
        await self.retained.open()
        if self.settings is not None:
            sock = listening_socket(self.settings.host, self.settings.port, self.bridge.reuse_port)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: TcpProtocol(self),
                sock=sock,
                ssl=self.options.ssl_context(),
                backlog=LISTEN_BACKLOG,  # asyncio re-listens with 100 unless told
            )
            self.port = sock.getsockname()[1]
            log.info(
                "listener.started",
                protocol="mqtts" if self.options.tls_cert else "mqtt",
                host=self.settings.host,
                port=self.port,
            )
        if self.bridge.web is not None and self.options.websocket_path:
            self.bridge.web.mount(*websocket_handler(self, self.options.websocket_path))
        self._housekeeping = asyncio.create_task(self._housekeep(), name="mqtt-housekeeping")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for client in list(self.connections):
            client.kick(ReasonCode.SERVER_SHUTTING_DOWN, "server shutting down")
        waiting = [c.done.wait() for c in list(self.connections) if c.registered]
        if waiting:
            await asyncio.wait([asyncio.ensure_future(w) for w in waiting], timeout=5)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
        with contextlib.suppress(KafkaUnavailable, TimeoutError):
            await self.instances.stop(self.sessions.store)  # after the wills it left are stored

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- registry ----------------------------------------------------------------------------------

    def opened(self, client: Client) -> None:
        self.connections.add(client)
        metrics.connection_opened(PROTOCOL)

    def registered(self, client: Client) -> None:
        self.clients[client.client_id] = client

    def unregistered(self, client: Client) -> None:
        if client in self.connections:  # once per connection, however it ended
            self.connections.discard(client)
            metrics.connection_closed(PROTOCOL)
        self._dirty.discard(client)
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]

    # -- subscriptions -------------------------------------------------------------------------

    def kafka_topics(self, subscription: Subscription) -> list[str]:
        topics = self._topics_of_routes.get(subscription.routes)
        if topics is None:
            by_name = self.bridge.routes.by_name
            topics = sorted({by_name[name].topic for name in subscription.routes})
            self._topics_of_routes[subscription.routes] = topics
        return topics

    async def prepare_feeds(self, subscription: Subscription) -> None:
        """Make sure every feed is ready, so attaching later needs no ``await`` in between."""
        _, hub = self.bridge.kafka
        for topic in self.kafka_topics(subscription):
            await hub.feed(topic)

    async def attach(self, subscription: Subscription, resume: bool) -> None:
        """Start delivering: from saved positions (resume) or live."""
        _, hub = self.bridge.kafka
        if subscription.group is not None:
            await self._join_group(subscription)
            return
        for topic in self.kafka_topics(subscription):
            tracker = subscription.trackers.get(topic)
            if resume and tracker is not None and tracker.read:
                start: Any = dict(tracker.read)
            else:
                feed = await hub.feed(topic)
                subscription.trackers[topic] = Tracker(read=dict(feed.position))
                start = Start.LIVE
            if subscription.client.closed:
                return
            subscription.hub_subscriptions.append(await hub.subscribe(topic, subscription, start))

    def detach(self, subscription: Subscription) -> None:
        subscription.close()
        if subscription.group is None:
            return
        key = (subscription.group, subscription.topic_filter)
        group = self.groups.get(key)
        if group is None:
            return
        if subscription in group.members:
            group.members.remove(subscription)
        if not group.members:
            group.close()
            del self.groups[key]
            self.spawn(self._save_group(group))
            self.spawn(self.membership.leave(*key))

    async def _join_group(self, subscription: Subscription) -> None:
        assert subscription.group is not None
        key = (subscription.group, subscription.topic_filter)
        group = self.groups.get(key)
        if group is None:
            name, topic_filter = key
            group = SharedGroup(
                name,
                topic_filter,
                resolve=self.resolve,
                mine=lambda partition: self.membership.serves(name, topic_filter, partition),
            )
            self.groups[key] = group
            await self.membership.join(name, topic_filter)
            _, hub = self.bridge.kafka
            for topic in self.kafka_topics(subscription):
                feed = await hub.feed(topic)
                partitions = sorted(feed.position)
                saved = self.membership.saved_positions(name, topic_filter, topic, partitions)
                # where the group stopped, else live (a new group, or partitions never served)
                start: Any = (
                    {p: saved.get(p, feed.position[p]) for p in partitions} if saved else Start.LIVE
                )
                group.hub_subscriptions.append(await hub.subscribe(topic, group, start))
        group.members.append(subscription)
        group.joined(subscription.client.persistent, subscription.client.expiry)

    def matches(self, topic_filter: str, topic: str) -> bool:
        """``filter_matches``, cached: thousands of subscribers share a few filters and topics."""
        key = (topic_filter, topic)
        found = self._matches.get(key)
        if found is None:
            found = filter_matches(topic_filter, topic)
            if len(self._matches) >= ROUTE_CACHE:
                self._matches.clear()
            self._matches[key] = found
        return found

    def route_of(self, topic: str) -> Match[Route] | None:
        """The route (and parameters) of an MQTT topic; publishers repeat topics, so cached."""
        cached = self._routes_of.get(topic, _MISSING)
        if cached is _MISSING:
            cached = self.bridge.routes.mqtt.match(topic)
            if len(self._routes_of) >= ROUTE_CACHE:
                self._routes_of.clear()
            self._routes_of[topic] = cached
        return cached  # type: ignore[return-value]

    def body_free(self, route: Route) -> bool:
        """Whether ``route``'s key and headers are the same for every payload (no
        ``{$body...}`` template), so a client may reuse them for a topic (``Client.record_for``)."""
        free = self._body_free.get(route.name)
        if free is None:
            templates = [*route.headers.values(), *([route.key] if route.key else [])]
            free = not any(s.startswith("$body.") for t in templates for s in t.sources)
            self._body_free[route.name] = free
        return free

    # -- per-record caches (the hub hands the same record object to every subscriber) -----------

    def resolve(self, record: Message) -> tuple[Route, str] | None:
        """The route and MQTT topic of a Kafka record (cached for the record being fanned out)."""
        last, resolved = self._resolved
        if last is record:
            return resolved
        resolved = self._resolve(record)
        self._resolved = (record, resolved)
        return resolved

    def _resolve(self, record: Message) -> tuple[Route, str] | None:
        routes = self.bridge.routes
        raw = record.header(records.TOPIC)
        if raw is not None:
            topic = raw.decode("utf-8", "replace")
            match = routes.mqtt.match(topic)
            if match is not None and match.target.topic == record.topic:
                return match.target, topic
        return routes.mqtt_topic_of(record)

    def encoder(
        self,
        record: Message,
        route: Route,
        topic: str,
        qos: int,
        version: int,
        identifier: int | None,
        now_ms: int,
    ) -> PreparedPublish:
        """The PUBLISH for ``record`` encoded once per (QoS, version, subscription id)."""
        if self._encoders_for is not record:
            self._encoders.clear()
            self._encoders_for = record
        key = (qos, version, identifier)
        encoder = self._encoders.get(key)
        if encoder is None:
            props = EMPTY_PROPERTIES
            if version == 5:
                props = records.delivery_properties(record, route, now_ms)
                if identifier is not None:
                    from dataclasses import replace

                    props = replace(props, subscription_identifiers=(identifier,))
            encoder = prepare_publish(
                topic, record.value or b"", qos=qos, properties=props, version=version
            )
            self._encoders[key] = encoder
        return encoder

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    # -- metrics -----------------------------------------------------------------------------------

    def inbound(self, route: str) -> InboundCounter:
        """The messages-in counter of ``route``, looked up once (one call per publish)."""
        counted = self._inbound.get(route)
        if counted is None:
            counted = self._inbound[route] = InboundCounter(route)
        return counted

    def delivered(self, route: str, size: int) -> None:
        """One delivery to one client: summed here, counted once per flush, because a record
        fanned out to thousands of subscribers must not take the metrics lock each time."""
        counts = self._delivered.get(route)
        if counts is None:
            counts = self._delivered[route] = [0, 0]
        counts[0] += 1
        counts[1] += size

    def _count_deliveries(self) -> None:
        delivered, self._delivered = self._delivered, {}
        for route, (count, size) in delivered.items():
            metrics.MESSAGES_OUT.labels(route, PROTOCOL).inc(count)
            metrics.BYTES_OUT.labels(route, PROTOCOL).inc(size)

    # -- coalesced writes ------------------------------------------------------------------------

    def mark_dirty(self, client: Client) -> None:
        self._dirty.add(client)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._delivered:
            self._count_deliveries()
        dirty, self._dirty = self._dirty, set()
        for client in dirty:
            client.flush()

    # -- housekeeping: keepalive, session saves, expiry -------------------------------------------

    async def _housekeep(self) -> None:
        last_flush = last_sweep = last_refresh = last_beat = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self._check_deadlines(now)
            if now - last_beat >= self.instances.beat_every_s:
                last_beat = now
                self.spawn(self._beat())
            if now - last_flush >= self.options.session_flush_s:
                last_flush = now
                await self.sessions.flush_dirty()
                for group in list(self.groups.values()):
                    if group.unsaved:
                        self.spawn(self._save_group(group))
            if now - last_refresh >= REFRESH_S:
                last_refresh = now
                for name, topic_filter in list(self.groups):
                    self.spawn(self.membership.join(name, topic_filter))
            if now - last_sweep >= self.options.expiry_sweep_s:
                last_sweep = now
                try:
                    await self.sessions.sweep_expired()
                except Exception as exc:
                    log.warning("mqtt.expiry_sweep_failed", error=repr(exc))

    async def _save_group(self, group: SharedGroup) -> None:
        try:
            await self.membership.save_progress(group)
        except (KafkaUnavailable, TimeoutError) as exc:  # resumes from an older position
            log.warning("mqtt.group_progress_not_saved", group=group.name, error=str(exc))

    async def _beat(self) -> None:
        try:
            await self.instances.beat(self.sessions.store)
        except (KafkaUnavailable, TimeoutError) as exc:  # others may think us dead meanwhile
            log.warning("mqtt.heartbeat_failed", instance=self.instance, error=str(exc))

    def _check_deadlines(self, now: float) -> None:
        for client in list(self.connections):
            conn = client.conn
            if (
                conn.state is State.AWAIT_CONNECT
                and now - client.created > self.options.connect_timeout_s
            ):
                log.warning("mqtt.connect_timeout", remote=client.remote)
                client.close()
                continue
            deadline = conn.deadline()
            if deadline is not None and now > deadline:
                log.warning(
                    "mqtt.keepalive_timeout", client_id=client.client_id, keepalive=conn.keepalive
                )
                client.kick(ReasonCode.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
