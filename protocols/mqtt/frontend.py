"""The MQTT front-end's server: listeners (TCP, TLS, WebSocket), the client registry, and the
parts every connection of this instance shares, wired together at start-up:

* :mod:`.ingest` (publishes and wills to Kafka), :mod:`.delivery` (records to clients: the
  per-record caches and coalesced writes);
* the session state, each on the sessions table: :mod:`.sessions`, :mod:`.wills`,
  :mod:`.instances`, :mod:`.shared`; and :mod:`.retained` on the retained-messages table;
* housekeeping: keepalive and CONNECT deadlines, session saves, heartbeats, expiry sweeps.

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
from functools import partial
from typing import Any

import structlog

from bridge.edge.dead_letters import reject_payload
from bridge.kafka.hub import CallbackSubscriber, Start, TopicFeed
from bridge.kafka.resets import FROM_START, LIVE, RESET
from bridge.kafka.stream_start import hub_start_after_reset
from bridge.kafka.table_store import TableStore
from bridge.model.config import TopicSpec
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.process.runtime import Bridge
from bridge.telemetry import metrics
from bridge.web.dispatch import WEBSOCKET
from bridge.web.sockets import LISTEN_BACKLOG, listening_socket

from .client import LINGER_S, Client
from .delivery import Delivery
from .ingest import Ingest
from .instances import Instances
from .options import MqttOptions
from .retained import RetainedMessages
from .sessions import SessionManager
from .shared import REFRESH_S, Membership
from .subscriptions import SharedGroup, Subscription, TopicSubscriber, Tracker
from .transport import TcpProtocol, websocket_handler
from .wills import Wills, client_of_will_key
from .wire.connection import State
from .wire.packets import ReasonCode

log = structlog.get_logger(__name__)
PROTOCOL = "mqtt"
TICK_S = 0.25


class MqttFrontend:
    name = "mqtt"

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.guard = bridge.guard
        self.routes = bridge.routes
        self.settings = bridge.config.mqtt_listener
        self.options = MqttOptions.from_options(self.settings.options if self.settings else {})
        self.limits = self.options.limits()
        self.delivery = Delivery(self.routes, self.options.max_write_buffer)
        self.port: int | None = None
        self.clients: dict[str, Client] = {}  # connected, by client id
        self.connections: set[Client] = set()  # every open connection, also before CONNECT
        self.groups: dict[tuple[str, str], SharedGroup] = {}
        self.instance = uuid.uuid4().hex[:12]  # this process: shared groups, wills, heartbeats
        self.instances = Instances(self.instance, self.options.instance_timeout_s)
        # made at start(), once Kafka is there
        self.ingest: Ingest
        self.sessions: SessionManager
        self.wills: Wills
        self.membership: Membership
        self.retained: RetainedMessages
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._topics_of_routes: dict[frozenset[str], list[str]] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    def topics(self) -> list[TopicSpec]:
        return [
            TopicSpec(self.options.sessions_topic, 1, 1, compact=True),
            TopicSpec(self.options.retained_topic, 1, 1, compact=True),
        ]

    async def start(self) -> None:
        producer, hub = self.bridge.kafka
        retained_table = await TableStore(producer, hub, self.options.retained_topic).open()
        self.retained = RetainedMessages(
            retained_table, retained_table.feed, self.options.retained_topic, self.routes
        )
        self.ingest = Ingest(
            self.routes, producer, self.retained, self.options, partial(reject_payload, producer)
        )
        self.ingest.config = self.bridge.config
        store = await TableStore(producer, hub, self.options.sessions_topic).open()
        self.sessions = SessionManager(store, self.clients)
        self.wills = Wills(
            self.instance, store, self.instances, self.ingest, self.clients.__contains__, self.spawn
        )
        self.membership = Membership(store, self.instance)
        self.instances.load(store.items())  # before the wills that name them
        self.wills.load(store.items())
        self.membership.load()
        await hub.subscribe(
            self.options.sessions_topic, CallbackSubscriber(self._session_record), Start.LIVE
        )
        await self.instances.beat(store)
        if self.settings is not None:
            sock = listening_socket(self.settings.host, self.settings.port, self.bridge.reuse_port)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: TcpProtocol(self),
                sock=sock,
                ssl=self.options.ssl_context(),
                backlog=LISTEN_BACKLOG,  # asyncio re-listens with 100 unless told
                # a TLS close after a reason (client.py): close_notify, then this long at most
                ssl_shutdown_timeout=LINGER_S if self.options.tls_cert else None,
            )
            self.port = sock.getsockname()[1]
            log.info(
                "listener.started",
                protocol="mqtts" if self.options.tls_cert else "mqtt",
                host=self.settings.host,
                port=self.port,
            )
        if self.bridge.web is not None and self.options.websocket_path:
            path = self.options.websocket_path
            self.bridge.web.route(
                "MQTT over WebSocket", path, (WEBSOCKET,), websocket_handler(self, path)
            )
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
        if not hasattr(self, "sessions"):
            return  # the bridge stops after a failed start (a port in use): nothing was announced
        with contextlib.suppress(KafkaUnavailable, TimeoutError):
            await self.instances.stop(self.sessions.store)  # after the wills it left are stored

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _session_record(self, record: Message, position: Position) -> None:
        """A record of the sessions table, in table order: to the part it is about."""
        self.membership.observe(record)
        self.instances.observe(record)
        if client_of_will_key(record.key) is not None:
            self.wills.observe(record)
            return
        claimed = self.sessions.observe(record)
        if claimed is not None:  # connected somewhere: its will is void
            client_id, owner = claimed
            self.wills.cancel(client_id, unless_nonce=owner.nonce)

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
        self.delivery.forget(client)
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
            feed = await hub.feed(topic)
            if resume and tracker is not None and tracker.read:
                start: Any = dict(tracker.read)
                if tracker.epoch and feed.epoch and tracker.epoch != feed.epoch:
                    start = self._resume_reset(subscription, topic, tracker, feed)
                else:  # (a session saved before epochs: trusted, now in this one)
                    tracker.epoch = feed.epoch
            else:
                subscription.trackers[topic] = Tracker(read=dict(feed.position), epoch=feed.epoch)
                start = Start.LIVE
            if subscription.client.closed:
                return
            subscription.hub_subscriptions.append(
                await hub.subscribe(
                    topic,
                    subscription.for_topic(topic),
                    start,
                    record_filter=subscription.record_filters.get(topic),
                    after_reset=self.after_reset(subscription, topic),
                )
            )

    def after_reset(self, subscription: Subscription, topic: str) -> str:
        """The routes' choice after a reset of ``topic`` (``after_reset``): live only when every
        route of this subscription reading ``topic`` asks for it (never skip what one wants)."""
        by_name = self.bridge.routes.by_name
        choices = {
            by_name[name].after_reset
            for name in subscription.routes
            if by_name[name].topic == topic
        }
        return LIVE if choices == {LIVE} else FROM_START

    def _resume_reset(
        self, subscription: Subscription, topic: str, tracker: Tracker, feed: TopicFeed
    ) -> Any:
        """A saved position of another incarnation of ``topic`` (recreated, or the broker
        replaced): its offsets mean nothing now. The new incarnation is read from its start, or
        live as the route asks (never from the old offsets, which would skip its first records
        silently), and the first delivery tells an MQTT 5 client (user property
        ``edgebridge-reset: reset``)."""
        epoch = feed.epoch
        log.warning(
            "mqtt.resume_reset",
            client_id=subscription.client.client_id_bytes.decode("utf-8", "replace"),
            filter=subscription.full_filter,
            topic=topic,
            old_epoch=f"{tracker.epoch:08x}",
            epoch=f"{epoch:08x}",
            old_position=tracker.read,
        )
        metrics.RESUMES_RESET.labels(topic, PROTOCOL).inc()
        after_reset = self.after_reset(subscription, topic)
        read = dict(feed.position) if after_reset == LIVE else {}
        # the next record delivered carries the reset property
        subscription.restart(topic, Tracker(read=read, epoch=epoch, reset_reason=RESET))
        return hub_start_after_reset(after_reset)

    async def rejoin(self, subscription: Subscription, topic: str) -> None:
        """``topic`` exists again after it was deleted: deliver it from its start (or live, as
        the route asks), and tell the client with the first record (``edgebridge-reset:
        reset``)."""
        _, hub = self.bridge.kafka
        feed = await hub.feed(topic)
        after_reset = self.after_reset(subscription, topic)
        subscription.restart(topic, Tracker(epoch=feed.epoch, reset_reason=RESET))
        subscription.hub_subscriptions.append(
            await hub.subscribe(
                topic,
                subscription.for_topic(topic),
                hub_start_after_reset(after_reset),
                record_filter=subscription.record_filters.get(topic),
                after_reset=after_reset,
            )
        )
        log.info(
            "mqtt.subscription_back",
            client_id=subscription.client.client_id_bytes.decode("utf-8", "replace"),
            filter=subscription.full_filter,
            topic=topic,
        )

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
                resolve=self.delivery.resolve,
                mine=lambda partition: self.membership.serves(name, topic_filter, partition),
            )
            self.groups[key] = group
            await self.membership.join(name, topic_filter)
            _, hub = self.bridge.kafka
            for topic in self.kafka_topics(subscription):
                feed = await hub.feed(topic)
                partitions = sorted(feed.position)
                saved, reset = self.membership.saved_positions(
                    name, topic_filter, topic, partitions, feed.epoch
                )
                after_reset = self.after_reset(subscription, topic)
                if reset:  # progress of another incarnation: that part from the new start
                    log.warning(
                        "mqtt.group_resume_reset", group=name, filter=topic_filter, topic=topic
                    )
                    metrics.RESUMES_RESET.labels(topic, PROTOCOL).inc()
                    group.resets[topic] = RESET
                    if after_reset == LIVE:  # or live, as the routes ask: the whole topic
                        saved = {}
                # where the group stopped, else live (a new group, or partitions never served)
                start: Any = (
                    {p: saved.get(p, feed.position[p]) for p in partitions} if saved else Start.LIVE
                )
                group.hub_subscriptions.append(
                    await hub.subscribe(
                        topic, TopicSubscriber(group, topic), start, after_reset=after_reset
                    )
                )
        group.members.append(subscription)
        group.joined(subscription.client.persistent, subscription.client.expiry)

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
