"""One MQTT client connection: the asyncio glue between a transport, the sans-io
:class:`~protocols.mqtt.wire.connection.Connection` and the front-end's parts (guard, ingest,
sessions, wills, retained messages, delivery), which it reaches through :class:`ClientHost`.

Packets that need I/O (CONNECT, PUBLISH, SUBSCRIBE...) are handled in order by a worker task
that exists only while there is work, so an idle connection costs no task. PUBLISHes and their
acknowledgements are :mod:`.publishes`'s, SUBSCRIBE :mod:`.subscribe`'s; one PUBLISH per message
for overlapping subscriptions is :mod:`.overlap`'s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

import structlog

from bridge.edge.access import ANONYMOUS, Principal
from bridge.edge.credentials import mqtt_token
from bridge.edge.governance import region_of
from bridge.edge.guard import expiry_timer
from bridge.edge.transform import Projector, projector_for
from bridge.model.config import Route
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Message
from bridge.telemetry import metrics

from . import records
from .connect import ConnectRefused, admit, connack_properties, expiry_at_disconnect
from .host import ClientHost, LingeringTransport, Transport
from .ingest import Sender
from .overlap import SentOnce, overlapping
from .publishes import Publishes
from .session_state import StoredSubscription
from .subscribe import resume, subscribe, unsubscribe
from .subscriptions import Subscription, Tracker
from .wire.connection import (
    Acknowledged,
    Connection,
    ConnectReceived,
    DisconnectReceived,
    Event,
    ProtocolViolation,
    PublishReceived,
    State,
    SubscribeReceived,
    UnsubscribeReceived,
)
from .wire.packets import (
    Connect,
    Properties,
    ReasonCode,
)

log = structlog.get_logger(__name__)
PROTOCOL = "mqtt"
PAUSE_AT = 256  # queued packets before we stop reading from the socket
RESUME_AT = 32
DRAIN_S = 10.0  # at most this long producing what a departed client had sent
REJOIN_S = 2.0  # how often a deleted topic is looked for again (the hub checks as often)
LINGER_S = 1.0  # after a server-side close, input read and discarded this long at most


def _whole(record: Message) -> Message:
    return record


class Client:
    # Slots and lazily made queues: an idle connection should cost a few KiB at most.
    __slots__ = (
        "_done",
        "_draining",
        "_events",
        "_expiry_timer",
        "_finished",
        "_finishing",
        "_linger",
        "_paused",
        "_rejoining",
        "_sent",
        "_views",
        "_worker",
        "client_id",
        "client_id_bytes",
        "closed",
        "conn",
        "created",
        "delivery",
        "expiry",
        "fallback_token",
        "host",
        "nonce",
        "persistent",
        "principal",
        "publishes",
        "registered",
        "remote",
        "sender",
        "session_dirty",
        "subscriptions",
        "taken_over_by",
        "transport",
        "will",
    )

    def __init__(self, host: ClientHost[Client], transport: Transport, remote: str | None) -> None:
        self.host = host
        self.delivery = host.delivery  # per delivery: one attribute lookup less
        self.transport = transport
        self.remote = remote
        self.conn = Connection(host.limits)
        self.client_id = ""
        self.client_id_bytes = b""
        self.principal: Principal = ANONYMOUS
        # Route name -> what this client sees of its records ([[routes.transform.outbound]]);
        # made at the first record of a route that has views.
        self._views: dict[str, Projector | None] | None = None
        self.nonce = uuid.uuid4().hex
        self.subscriptions: dict[str, Subscription] = {}
        self.persistent = False
        self.expiry: int | None = 0
        self.session_dirty = False
        self.will: Connect | None = None
        self.closed = False
        self.registered = False
        self.taken_over_by: str | None = None  # nonce of the connection that replaced us
        self.sender: Sender  # set at CONNECT: this connection's publishing side
        self.publishes: Publishes  # set at CONNECT: its PUBLISHes and their acknowledgements
        self._done: asyncio.Event | None = None
        self._finished = False
        self._finishing = False
        self._linger: asyncio.TimerHandle | None = None
        self._draining = False
        self._events: deque[Event] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        self._rejoining: set[asyncio.Task[None]] | None = None  # topics deleted, awaited back
        # Clients with overlapping subscriptions: records already sent (overlap.py)
        self._sent: SentOnce | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self.fallback_token: str | None = None  # MQTT over WebSocket: the upgrade's token
        self.created = time.monotonic()

    @property
    def done(self) -> asyncio.Event:
        """Set once the connection is gone and its session saved or ended."""
        if self._done is None:
            self._done = asyncio.Event()
            if self._finished:
                self._done.set()
        return self._done

    # -- transport callbacks -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        events = self.conn.receive(data, time.monotonic())
        if self.conn.discarded:
            self._forget_discarded()
        for event in events:
            if isinstance(event, Acknowledged):
                self._acknowledged(event.token)
            elif isinstance(event, ProtocolViolation):
                metrics.rejected(PROTOCOL, "malformed")
                log.warning(
                    "mqtt.protocol_error",
                    client_id=self.client_id or None,
                    remote=self.remote,
                    reason_code=f"0x{event.reason_code:02X}",
                    detail=event.message,
                )
                self._events = None
                self.flush()
                self.close(linger=True, reason_code=event.reason_code)
                return
            else:
                if self._events is None:
                    self._events = deque()
                self._events.append(event)
        self.flush()
        if self._events and self._worker is None:
            self._worker = asyncio.create_task(self._work())
        if self._events and len(self._events) > PAUSE_AT and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if not self.closed:
            self.closed = True
            self.conn.state = State.CLOSED
            # The peer hung up after sending: PUBLISHes already received are still produced
            # (a QoS 0 burst followed by a close must not lose its tail); nothing is answered.
            self._draining = self.registered
        self._start_finish()

    def _start_finish(self) -> None:
        if not self._finishing:
            self._finishing = True
            self.host.spawn(self._finish())

    # -- output ---------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > self.delivery.max_write_buffer:
                # A subscriber that cannot keep up: close it; it resumes from its saved position.
                log.warning("mqtt.slow_consumer", client_id=self.client_id)
                metrics.slow_client_disconnected(PROTOCOL)
                self.kick(ReasonCode.QUOTA_EXCEEDED, "the client does not read fast enough")

    def close(self, linger: bool = False, reason_code: int = 0) -> None:
        """Close the connection; ``linger``: the server closes with something said (a
        DISCONNECT or CONNACK with ``reason_code``), which must reach the client.

        Closing a TCP socket that still has unread input makes the kernel send a reset, and a
        client that is still sending (a flood past Receive Maximum, say) then sees "connection
        reset" and may never read the reason queued before it. So: shut down the write side
        (FIN after what is queued), keep reading and discarding, and close when the peer
        closes or after ``LINGER_S``. The session is finished at once; only the socket waits.
        TLS has no half-close, and asyncio's TLS shutdown fails (and drops the socket) when
        application data arrives after our close_notify: so TLS sends the reason, reads and
        discards the same way, and only then closes (close_notify, the peer's awaited at most
        the listener's ``ssl_shutdown_timeout``). A WebSocket sends a close frame with a code
        fitting the reason and drains (transport.py).
        """
        if self.closed:
            return
        self.closed = True
        self.conn.state = State.CLOSED
        transport = self.transport
        if not linger:
            transport.close()
            return
        self._start_finish()
        if isinstance(transport, LingeringTransport):
            transport.close_lingering(reason_code, LINGER_S)
            return
        if not isinstance(transport, asyncio.WriteTransport):
            transport.close()
            return
        # Reading may be paused (a flood filled the queue): the peer's bytes must still be
        # read, or its writes stall and the final reset comes before our reason is read.
        transport.resume_reading()  # data_received discards everything from now on
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    @property
    def receiving(self) -> bool:
        """Can records be handed to this client now (connected, not closing)?"""
        return not self.closed and self.conn.state is State.CONNECTED

    def kick(self, code: int, reason: str) -> None:
        """Close from the server side, telling an MQTT 5 client why."""
        if self.closed:
            return
        self.conn.disconnect(code, reason)
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)
        self.close(linger=True, reason_code=code)

    # -- the worker ----------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while self._events:
                event = self._events.popleft()
                # Once the socket is closed only what the peer sent before matters: its
                # publishes (still produced) and a DISCONNECT (the will is then discarded, even
                # if the peer closed before this worker got to it).
                if self.closed and not (
                    self._draining and isinstance(event, (PublishReceived, DisconnectReceived))
                ):
                    continue
                if type(event) is PublishReceived:  # the hot one: one coroutine less
                    await self.publishes.publish(event.publish, event.topic)
                else:
                    await self._handle(event)
                self.flush()
                if self._paused and len(self._events) < RESUME_AT:
                    self._paused = False
                    self.transport.resume_reading()
        except KafkaUnavailable as exc:
            # Session state could not be written (a Kafka outage): nothing unacknowledged is
            # lost, the client reconnects and re-sends; tell an MQTT 5 client it is not its fault.
            log.warning("mqtt.kafka_unavailable", client_id=self.client_id, detail=str(exc))
            metrics.rejected(PROTOCOL, "kafka_unavailable")
            self.kick(ReasonCode.SERVER_BUSY, "Kafka unavailable; reconnect later")
        except Exception:
            log.exception("mqtt.client_failed", client_id=self.client_id)
            self.kick(ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
        finally:
            self._worker = None
            if not self._events:
                self._events = None

    async def _handle(self, event: Event) -> None:
        if isinstance(event, PublishReceived):
            await self.publishes.publish(event.publish, event.topic)
        elif isinstance(event, ConnectReceived):
            await self._connect(event.connect)
        elif isinstance(event, SubscribeReceived):
            await subscribe(self, event.subscribe)
        elif isinstance(event, UnsubscribeReceived):
            unsubscribe(self, event.unsubscribe)
        elif isinstance(event, DisconnectReceived):
            self._disconnect_received(event.disconnect.reason_code, event.disconnect.properties)

    # -- CONNECT -------------------------------------------------------------------------------

    async def _connect(self, connect: Connect) -> None:
        host = self.host
        version = self.conn.version
        token = mqtt_token(connect.username, connect.password) or self.fallback_token
        try:
            self.principal, granted = admit(
                connect, self.conn, host.guard, token, host.options.max_session_expiry, self.remote
            )
        except ConnectRefused as exc:
            self._refuse(exc.code, exc.reason)
            return
        client_id = self.client_id = granted.client_id
        self.client_id_bytes = client_id.encode()
        self.persistent, self.expiry = granted.persistent, granted.expiry
        self.sender = host.ingest.sender(client_id, self.principal, self.remote)
        self.publishes = Publishes(self, host.ingest, host.sessions, host.delivery)
        host.wills.cancel(client_id)
        host.wills.forget(client_id)  # a will stored by any instance is void now
        try:
            stored = await host.sessions.take_over(self)
        except (KafkaUnavailable, TimeoutError) as exc:
            log.warning("mqtt.session_store_unavailable", client_id=client_id, error=str(exc))
            metrics.rejected(PROTOCOL, "kafka_unavailable")
            self._refuse(ReasonCode.SERVER_UNAVAILABLE, "session store unavailable")
            return
        if self.closed:
            return
        present = stored is not None and not connect.clean_start
        if stored is not None and not present:
            await host.sessions.delete(client_id)
        self.will = connect if connect.will_topic is not None else None
        self.conn.accept(
            present,
            connack_properties(connect, version, host.limits, granted, self.conn.keepalive),
        )
        self.flush()
        host.registered(self)
        self.registered = True
        if self.will is not None:
            host.wills.arm(self, self.will)
        self._expiry_timer = expiry_timer(self.principal, self._token_expired)
        if present:
            assert stored is not None
            metrics.session_resumed(PROTOCOL)
            await resume(self, stored)
        if self.persistent:
            await host.sessions.save(self)
        log.info(
            "mqtt.connected",
            client_id=client_id,
            version=version,
            session_present=present,
            persistent=self.persistent,
            remote=self.remote,
        )

    def _refuse(self, code: int, reason: str) -> None:
        self.conn.refuse(code, reason)
        self.flush()
        self.close(linger=True, reason_code=code)

    def _token_expired(self) -> None:
        log.info("mqtt.token_expired", client_id=self.client_id)
        self.kick(ReasonCode.MAXIMUM_CONNECT_TIME, "the token has expired")

    # -- deliveries ------------------------------------------------------------------------------

    def _view(self, route: Route) -> Projector:
        views = self._views
        if views is None:
            views = self._views = {}
        if route.name not in views:
            config = self.host.ingest.config
            region = region_of(self.principal, config, "mqtt") if config is not None else None
            views[route.name] = projector_for(route, self.principal, region)
        return views[route.name] or _whole

    def send_record(
        self,
        subscription: Subscription,
        tracker: Tracker,
        record: Message,
        route: Route,
        topic: str,
        packet_id: int | None,
        track: bool = True,
        retain: bool = False,
    ) -> None:
        """Hand one record to the client (synchronous: called from the hub's dispatch)."""
        if not self.receiving:
            return
        if route.transform is not None and route.transform.outbound:
            projected = self._view(route)(record)
            if projected is None:
                return  # withheld: its view cannot be made (logged and counted)
            record = projected
        delivery = self.delivery
        now_ms = delivery.now_ms()
        if records.expired(record, now_ms):
            return
        sub_qos = subscription.qos
        identifiers = subscription.identifiers
        if not retain and track and len(self.subscriptions) > 1:
            # Overlapping subscriptions get ONE PUBLISH per message (overlap.py).
            if self._sent_once().was_sent(record):
                if packet_id is not None and packet_id not in self.conn.inflight:
                    self.conn.reserved_ids.discard(packet_id)
                return
            sub_qos, identifiers, reset = overlapping(
                self.subscriptions.values(), subscription, record, route, topic
            )
        else:
            reset = tracker.reset_reason
            if reset is not None:
                tracker.reset_reason = None  # told once, on this delivery
        qos = min(records.record_qos(record), sub_qos)
        if not retain and subscription.retain_as_published:
            retain = record.header(records.RETAIN) == b"1"
        encoder = delivery.encoder(
            record, route, topic, qos, self.conn.version, identifiers, now_ms, reset
        )
        token = None
        if qos and track and record.partition is not None and record.offset is not None:
            token = (subscription, record.topic, record.partition, record.offset, packet_id)
            tracker.sent(record.partition, record.offset)
        if not self.conn.deliver(
            encoder, qos, token, retain, dup=packet_id is not None, packet_id=packet_id
        ):
            log.warning("mqtt.queue_full", client_id=self.client_id)
            metrics.slow_client_disconnected(PROTOCOL)
            self.kick(ReasonCode.QUOTA_EXCEEDED, "too many messages waiting for acknowledgement")
            return
        delivery.delivered(route.name, len(record.value or b""))
        if self.conn.discarded:
            self._forget_discarded()
        if self.persistent and track:
            self.session_dirty = True
        delivery.mark_dirty(self)

    def release_packet_ids(self, packet_ids: Iterable[int]) -> None:
        inflight = self.conn.inflight
        for packet_id in packet_ids:
            if packet_id not in inflight:
                self.conn.reserved_ids.discard(packet_id)

    def mark_sent(self, record: Message) -> None:
        """A record one subscription skips as acknowledged before a reconnect: the others
        must not send it either."""
        if len(self.subscriptions) > 1 and record.partition is not None:
            self._sent_once().was_sent(record)

    def forget_sent(self, topic: str) -> None:
        """A reset of ``topic``: offsets remembered as sent no longer name those records."""
        if self._sent is not None:
            self._sent.forget(topic)

    def _sent_once(self) -> SentOnce:
        if self._sent is None:
            self._sent = SentOnce()
        return self._sent

    def _forget_discarded(self) -> None:
        """Deliveries too big for the client count as delivered: move positions past them."""
        for token in self.conn.discarded:
            self._acknowledged(token)
        self.conn.discarded.clear()

    def _acknowledged(self, token: Any) -> None:
        if token is None:
            return
        subscription, topic, partition, offset, _ = token
        tracker = subscription.trackers.get(topic)
        if tracker is not None:
            tracker.acked(partition, offset)
        if self.persistent:
            self.session_dirty = True

    def stored_subscriptions(self) -> dict[str, StoredSubscription]:
        """Subscriptions as session state: positions and deliveries in flight."""
        inflight = self.inflight_tokens()
        return {
            topic_filter: subscription.stored(inflight.get(subscription, {}))
            for topic_filter, subscription in self.subscriptions.items()
        }

    def pubrel_ids(self) -> tuple[list[int], list[int]]:
        return sorted(self.conn.awaiting_pubcomp), sorted(self.conn.awaiting_pubrel)

    def inflight_tokens(self) -> dict[Subscription, dict[tuple[str, int, int], int]]:
        """Deliveries sent but not acknowledged, with their packet ids, per subscription."""
        out: dict[Subscription, dict[tuple[str, int, int], int]] = {}
        for outgoing in self.conn.inflight.values():
            if outgoing.token is None or outgoing.packet_id is None:
                continue
            subscription, topic, partition, offset, _ = outgoing.token
            out.setdefault(subscription, {})[(topic, partition, offset)] = outgoing.packet_id
        return out

    # -- the end ---------------------------------------------------------------------------------

    def _disconnect_received(self, code: int, properties: Properties) -> None:
        try:
            expiry = expiry_at_disconnect(
                self.conn.version, self.expiry, properties, self.host.options.max_session_expiry
            )
        except ConnectRefused as exc:
            log.warning("mqtt.protocol_error", client_id=self.client_id, detail=exc.reason)
            self.conn.state = State.CONNECTED
            self.kick(exc.code, exc.reason)
            return
        if expiry != self.expiry:
            self.expiry = expiry
            self.persistent = expiry is None or expiry > 0
        if code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
            self.will = None  # a normal DISCONNECT discards the will
        self.close()

    async def _finish(self) -> None:
        """After the connection is gone: will, session state, subscriptions, registry."""
        try:
            self._closing_tasks()
            await self._drain_worker()
            for subscription in self.subscriptions.values():
                self.host.detach(subscription)
            if not self.registered:
                return
            taken_over = self.taken_over_by is not None
            if self.will is not None and (not taken_over or self.conn.version == 5):
                # MQTT 5 publishes the will of a connection taken over too (3.1.4-3), unless
                # its delay runs: the new connection then voids it at once (3.1.2.5).
                self.host.wills.schedule(self, self.will, taken_over)
            else:  # no will now; a new connection's CONNECT deleted the stored one already
                self.host.wills.disarm(self, delete=not taken_over)
            await self.host.sessions.release(self)
        except Exception:
            log.exception("mqtt.finish_failed", client_id=self.client_id)
        finally:
            self.host.unregistered(self)
            self._finished = True
            if self._done is not None:
                self._done.set()
            log.info("mqtt.disconnected", client_id=self.client_id or None, remote=self.remote)

    def _closing_tasks(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        for task in self._rejoining or ():
            task.cancel()

    def topic_gone(self, subscription: Subscription, topic: str) -> None:
        """``topic`` was deleted: look for it every ``REJOIN_S`` while the subscription lasts."""
        if self.closed:
            return
        if self._rejoining is None:
            self._rejoining = set()
        task = asyncio.create_task(self._rejoin(subscription, topic))
        self._rejoining.add(task)
        task.add_done_callback(self._rejoining.discard)

    async def _rejoin(self, subscription: Subscription, topic: str) -> None:
        while not self.closed and self.subscriptions.get(subscription.full_filter) is subscription:
            await asyncio.sleep(REJOIN_S)
            if self.closed or self.subscriptions.get(subscription.full_filter) is not subscription:
                return
            try:
                await self.host.rejoin(subscription, topic)
                return
            except (UnknownTopic, KafkaUnavailable):
                continue

    async def _drain_worker(self) -> None:
        worker = self._worker
        if worker is None or worker is asyncio.current_task():
            return
        if self._draining:
            try:
                await asyncio.wait_for(asyncio.shield(worker), DRAIN_S)
                return
            except (TimeoutError, asyncio.CancelledError):
                log.warning("mqtt.drain_timeout", client_id=self.client_id)
        worker.cancel()
