"""The per-connection MQTT state machine, sans-io: bytes and clock readings in, events out.

It knows MQTT and nothing else: no sockets, no Kafka, no asyncio. The transport feeds it bytes
with :meth:`Connection.receive` and writes :meth:`Connection.data_to_send`; the front-end reacts
to the events (authenticate a CONNECT, produce a PUBLISH, start a subscription) and answers
through the methods named after the packet they send (:meth:`accept`, :meth:`publish_done`,
:meth:`suback`...). What it keeps:

* the negotiated limits (the client's receive maximum, maximum packet size; ours);
* inbound: topic aliases, QoS 1/2 publishes not yet acknowledged (our receive maximum), QoS 2
  packet ids awaiting PUBREL (exactly once: a re-sent PUBLISH with such an id is not produced
  again);
* outbound: packet ids, publishes in flight (QoS 1 awaiting PUBACK, QoS 2 awaiting PUBREC),
  PUBRELs awaiting PUBCOMP, a queue of deliveries held back by the client's receive maximum, and
  the topic aliases this connection has set (MQTT 5, up to the client's Topic Alias Maximum);
* the keepalive deadline (1.5 x keepalive after the last packet received).

Each delivery carries an opaque ``token`` that comes back in :class:`Acknowledged` when the
client has taken responsibility for it (PUBACK, or PUBREC for QoS 2), so the front-end can move
the subscription's saved position.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .codec import Decoder, encode
from .fastinit import maker
from .packets import (
    EMPTY_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    MQTTProtocolError,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)

MAX_PACKET_ID = 0xFFFF


class State(Enum):
    AWAIT_CONNECT = "await_connect"
    CONNECTING = "connecting"  # CONNECT received, CONNACK not yet sent
    CONNECTED = "connected"
    CLOSED = "closed"


class IdSet(dict[int, None]):
    """A set of packet ids stored as a dict: an empty dict is 64 bytes, an empty set 216, and
    every connection keeps four of these."""

    __slots__ = ()

    def add(self, packet_id: int) -> None:
        self[packet_id] = None

    def discard(self, packet_id: int) -> None:
        self.pop(packet_id, None)

    def update(self, packet_ids: Any = (), /, **_: Any) -> None:
        for packet_id in packet_ids:
            self[packet_id] = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What this server accepts; advertised in the MQTT 5 CONNACK."""

    max_packet_size: int = 1 << 20
    receive_maximum: int = 1024  # inbound QoS 1/2 publishes not yet acknowledged
    topic_alias_maximum: int = 64
    outbound_topic_aliases: int = 256  # aliases we set per connection (capped by the client's)
    max_queued: int = 10_000  # deliveries held back by the client's receive maximum
    server_keep_alive: int | None = None  # MQTT 5: impose this keepalive (seconds) when set
    max_keep_alive: int | None = None  # cap (seconds) on the keepalive a client may ask for


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    connect: Connect


@dataclass(frozen=True, slots=True)
class PublishReceived:
    """An application message from the client (topic alias already resolved)."""

    publish: Publish
    topic: str


@dataclass(frozen=True, slots=True)
class SubscribeReceived:
    subscribe: Subscribe


@dataclass(frozen=True, slots=True)
class UnsubscribeReceived:
    unsubscribe: Unsubscribe


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The client took responsibility for a delivery (PUBACK, or PUBREC for QoS 2)."""

    token: Any


@dataclass(frozen=True, slots=True)
class DisconnectReceived:
    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the protocol; the answer is queued, the connection must close."""

    reason_code: int
    message: str


_received = maker(PublishReceived)  # one per PUBLISH received: the fast way

Event = (
    ConnectReceived
    | PublishReceived
    | SubscribeReceived
    | UnsubscribeReceived
    | Acknowledged
    | DisconnectReceived
    | ProtocolViolation
)


@dataclass(slots=True)
class Outgoing:
    """A QoS 1/2 delivery in flight or queued."""

    token: Any
    data: bytes | None  # encoded PUBLISH, without the packet id spliced in yet if queued
    encoder: Any = None  # PreparedPublish-like: .packet(packet_id, dup=, retain=)
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(slots=True)
class Connection:
    limits: Limits = field(default_factory=Limits)
    state: State = State.AWAIT_CONNECT
    version: int = 4
    keepalive: int = 0
    last_received: float = 0.0
    # what the client announced (MQTT 5)
    client_receive_maximum: int = MAX_PACKET_ID
    client_max_packet_size: int | None = None
    alias_out_max: int = 0  # topic aliases we may set: min(client's maximum, ours); 0: none
    # inbound
    inbound_aliases: dict[int, str] = field(default_factory=dict)
    inbound_pending: IdSet = field(default_factory=IdSet)  # QoS 1/2 ids being produced
    awaiting_pubrel: IdSet = field(default_factory=IdSet)  # QoS 2 ids answered with PUBREC
    # outbound
    inflight: dict[int, Outgoing] = field(default_factory=dict)  # awaiting PUBACK / PUBREC
    awaiting_pubcomp: IdSet = field(default_factory=IdSet)
    queued: deque[Outgoing] | None = None  # made when first needed (idle connections are many)
    reserved_ids: IdSet = field(default_factory=IdSet)  # restored from a session, not reusable
    discarded: list[Any] = field(default_factory=list)  # tokens of deliveries too big to send
    # topic -> alias set on this connection, least recently used first (made at first use)
    outbound_aliases: dict[str, int] | None = None
    _next_id: int = 1
    _out: list[bytes] = field(default_factory=list)
    decoder: Decoder = field(init=False)

    def __post_init__(self) -> None:
        self.decoder = Decoder(self.limits.max_packet_size)

    # -- bytes in ------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Feed received bytes; return what happened. Never raises for bad input."""
        if self.state is State.CLOSED:
            return []
        self.last_received = now
        try:
            packets = self.decoder.feed(data)
        except MQTTProtocolError as exc:
            events = self._handle_all(getattr(exc, "packets", ()))
            return [*events, self.violate(exc.reason_code, exc.message)]
        return self._handle_all(packets)

    def _handle_all(self, packets: Any) -> list[Event]:
        events: list[Event] = []
        for packet in packets:
            if self.state is State.CLOSED:
                break
            event = self._handle(packet)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, packet: Packet) -> Event | None:
        if isinstance(packet, Connect):
            self.state = State.CONNECTING
            self.version = 5 if packet.protocol_level == 5 else 4
            self.keepalive = self.granted_keepalive(packet.keepalive)
            props = packet.properties
            if props.receive_maximum:
                self.client_receive_maximum = props.receive_maximum
            self.client_max_packet_size = props.maximum_packet_size
            if self.version == 5:
                self.alias_out_max = min(
                    props.topic_alias_maximum or 0, self.limits.outbound_topic_aliases
                )
            return ConnectReceived(packet)
        if self.state is State.AWAIT_CONNECT:
            return self.violate(
                ReasonCode.PROTOCOL_ERROR, f"{type(packet).__name__} before CONNECT"
            )
        # In CONNECTING a client may already send more packets (MQTT 5 section 3.1.4); the
        # front-end handles events in order, so they wait for the CONNACK.
        handler = _HANDLERS.get(type(packet))
        if handler is None:
            return self.violate(ReasonCode.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")
        return handler(self, packet)

    def _on_publish(self, packet: Publish) -> Event | None:
        topic = self._resolve_alias(packet)
        if topic is None:
            return self.violate(ReasonCode.TOPIC_ALIAS_INVALID, "unknown or invalid topic alias")
        if packet.qos == 0:
            return _received(packet, topic)
        pid = packet.packet_id
        assert pid is not None
        if pid in self.inbound_pending:
            return None  # a re-send while the first copy is still being produced
        if packet.qos == 2 and pid in self.awaiting_pubrel:
            self._send(Pubrec(pid))  # already produced: exactly once, just re-acknowledge
            return None
        if len(self.inbound_pending) + len(self.awaiting_pubrel) >= self.limits.receive_maximum:
            return self.violate(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
        self.inbound_pending.add(pid)
        return _received(packet, topic)

    def _resolve_alias(self, packet: Publish) -> str | None:
        alias = packet.properties.topic_alias if self.version == 5 else None
        if alias is None:
            return packet.topic
        if alias > self.limits.topic_alias_maximum:
            return None
        if packet.topic:
            self.inbound_aliases[alias] = packet.topic
            return packet.topic
        return self.inbound_aliases.get(alias)

    def _on_puback(self, packet: Puback) -> Event | None:
        outgoing = self.inflight.get(packet.packet_id)
        if outgoing is None or outgoing.data is None or _qos_of(outgoing) != 1:
            return None  # unknown id: tolerated (a late ack after a resend)
        del self.inflight[packet.packet_id]
        self.reserved_ids.discard(packet.packet_id)  # a redelivery on an id a session reserved
        self._release_queue()
        return Acknowledged(outgoing.token)

    def _on_pubrec(self, packet: Pubrec) -> Event | None:
        outgoing = self.inflight.pop(packet.packet_id, None)
        if packet.reason_code >= 0x80:  # refused: the id is free at once (no PUBREL/PUBCOMP)
            self.reserved_ids.discard(packet.packet_id)
            self._release_queue()
            return Acknowledged(outgoing.token) if outgoing else None
        self.awaiting_pubcomp.add(packet.packet_id)
        self._send(Pubrel(packet.packet_id))
        return Acknowledged(outgoing.token) if outgoing else None

    def _on_pubcomp(self, packet: Pubcomp) -> Event | None:
        self.awaiting_pubcomp.discard(packet.packet_id)
        self.reserved_ids.discard(packet.packet_id)
        self._release_queue()
        return None

    def _on_pubrel(self, packet: Pubrel) -> Event | None:
        found = packet.packet_id in self.awaiting_pubrel
        self.awaiting_pubrel.discard(packet.packet_id)
        code = 0 if found else ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
        self._send(Pubcomp(packet.packet_id, code))
        return None

    def _on_subscribe(self, packet: Subscribe) -> Event:
        return SubscribeReceived(packet)

    def _on_unsubscribe(self, packet: Unsubscribe) -> Event:
        return UnsubscribeReceived(packet)

    def _on_ping(self, packet: Pingreq) -> None:
        self._send(Pingresp())

    def _on_disconnect(self, packet: Disconnect) -> Event:
        self.state = State.CLOSED
        return DisconnectReceived(packet)

    def violate(self, code: int, message: str) -> ProtocolViolation:
        """Queue the right answer to a protocol violation and close."""
        if self.state in (State.AWAIT_CONNECT, State.CONNECTING):
            version = self.decoder.version or 4
            if code < 0x80 or version == 5 or code in _V3_CONNACK_CODES:
                self._out.append(encode(Connack(False, code), version))
        elif self.version == 5:
            self._send(Disconnect(code, Properties(reason_string=message[:200])))
        self.state = State.CLOSED
        return ProtocolViolation(code, message)

    # -- answers -------------------------------------------------------------------------------

    def accept(self, session_present: bool, properties: Properties = EMPTY_PROPERTIES) -> None:
        self._send(Connack(session_present, 0, properties))
        self.state = State.CONNECTED

    def refuse(self, code: int, reason: str = "") -> None:
        props = (
            Properties(reason_string=reason[:200])
            if reason and self.version == 5
            else EMPTY_PROPERTIES
        )
        self._out.append(encode(Connack(False, code, props), self.version))
        self.state = State.CLOSED

    def publish_done(self, publish: Publish, code: int = 0, reason: str = "") -> None:
        """Kafka acknowledged (or refused) an inbound publish: answer it."""
        pid = publish.packet_id
        if not publish.qos or pid is None:
            return
        self.inbound_pending.discard(pid)
        props = (
            Properties(reason_string=reason[:200])
            if reason and self.version == 5
            else EMPTY_PROPERTIES
        )
        if publish.qos == 1:
            if code or props is not EMPTY_PROPERTIES:
                self._send(Puback(pid, code, props))
            else:  # the usual answer, written directly: what encode(Puback(pid)) gives
                self._out.append(b"\x40\x02" + pid.to_bytes(2, "big"))
            return
        if code < 0x80:
            self.awaiting_pubrel.add(pid)
        self._send(Pubrec(pid, code, props))

    def suback(self, packet_id: int, codes: list[int], reason: str = "") -> None:
        """``reason``: an MQTT 5 reason string saying why a subscription was refused."""
        props = (
            Properties(reason_string=reason[:200])
            if reason and self.version == 5
            else EMPTY_PROPERTIES
        )
        self._send(Suback(packet_id, tuple(codes), props))

    def unsuback(self, packet_id: int, codes: list[int]) -> None:
        self._send(Unsuback(packet_id, tuple(codes) if self.version == 5 else ()))

    def disconnect(self, code: int, reason: str = "") -> None:
        """Server-side close: MQTT 5 says why; 3.1.1 just closes."""
        if self.state is State.CONNECTED and self.version == 5:
            props = Properties(reason_string=reason[:200]) if reason else EMPTY_PROPERTIES
            self._send(Disconnect(code, props))
        self.state = State.CLOSED

    # -- deliveries ----------------------------------------------------------------------------

    def deliver(
        self,
        encoder: Any,
        qos: int,
        token: Any = None,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
    ) -> bool:
        """Send (or queue, QoS > 0 beyond the client's receive maximum) one PUBLISH.

        ``encoder`` is a :class:`~protocols.mqtt.codec.PreparedPublish` of the right QoS.
        Returns False when the queue is full: the front-end should close the connection (the
        client resumes from its saved position).
        """
        if qos == 0:
            self._write_publish(encoder, None, False, retain)
            return True
        outgoing = Outgoing(token, None, encoder, retain, dup, packet_id)
        if self._quota() and not self.queued:
            return self._launch(outgoing)
        if self.queued is None:
            self.queued = deque()
        if len(self.queued) >= self.limits.max_queued:
            return False
        self.queued.append(outgoing)
        return True

    def _launch(self, outgoing: Outgoing) -> bool:
        pid = outgoing.packet_id or self._allocate_id()
        if pid is None:
            if self.queued is None:
                self.queued = deque()
            self.queued.appendleft(outgoing)
            return True
        outgoing.packet_id = pid
        data = self._write_publish(outgoing.encoder, pid, outgoing.dup, outgoing.retain)
        if data is None:
            # The client cannot take it: as if delivered (MQTT 5 section 3.1.2.25); the
            # front-end must move the position past it (see ``discarded``).
            self.discarded.append(outgoing.token)
            return True
        outgoing.data = data
        self.inflight[pid] = outgoing
        return True

    def _write_publish(
        self, encoder: Any, packet_id: int | None, dup: bool, retain: bool
    ) -> bytes | None:
        """Encode one PUBLISH (with a topic alias when the client allows them) and queue it;
        None, and nothing queued or remembered, if it exceeds the client's maximum packet size.

        Aliases are assigned here, when the bytes are queued, so the packet that sets an alias
        always precedes the packets that use it, also for deliveries held back and launched
        later. They live and die with this connection: a re-send after a reconnect is encoded
        for the new connection, whose first PUBLISH of a topic carries the topic name again.
        """
        if not self.alias_out_max:
            data = encoder.packet(packet_id, dup=dup, retain=retain)
            if not self._fits(data):
                return None
            self._out.append(data)
            return data
        aliases = self.outbound_aliases
        if aliases is None:
            aliases = self.outbound_aliases = {}
        topic = encoder.topic
        alias = aliases.get(topic)
        if alias is not None:
            data = encoder.aliased(alias, False, packet_id, dup=dup, retain=retain)
            if not self._fits(data):
                return None
            del aliases[topic]  # re-inserted last: most recently used
            aliases[topic] = alias
        else:
            # Every alias in use: the least recently used one is reassigned to this topic by
            # sending the topic name with it (MQTT 5 section 3.3.2.3.4).
            victim = next(iter(aliases)) if len(aliases) >= self.alias_out_max else None
            alias = aliases[victim] if victim is not None else len(aliases) + 1
            data = encoder.aliased(alias, True, packet_id, dup=dup, retain=retain)
            if not self._fits(data):
                return None
            if victim is not None:
                del aliases[victim]
            aliases[topic] = alias
        self._out.append(data)
        return data

    def _release_queue(self) -> None:
        while self.queued and self._quota():
            self._launch(self.queued.popleft())
            if self.queued and self.queued[0].packet_id is None and not self._free_ids():
                break

    def _quota(self) -> bool:
        """MQTT 5 section 4.9: a QoS 2 delivery counts until its PUBCOMP."""
        return len(self.inflight) + len(self.awaiting_pubcomp) < self.client_receive_maximum

    def _free_ids(self) -> bool:
        return (
            len(self.inflight) + len(self.awaiting_pubcomp) + len(self.reserved_ids) < MAX_PACKET_ID
        )

    def _allocate_id(self) -> int | None:
        if not self._free_ids():
            return None
        while True:
            pid = self._next_id
            self._next_id = pid % MAX_PACKET_ID + 1
            if (
                pid not in self.inflight
                and pid not in self.awaiting_pubcomp
                and pid not in self.reserved_ids
            ):
                return pid

    def restore_pubrel(self, packet_ids: list[int]) -> None:
        """A resumed session's QoS 2 deliveries the client had PUBREC'd: PUBREL them again."""
        for pid in packet_ids:
            self.awaiting_pubcomp.add(pid)
            self._send(Pubrel(pid))

    def _fits(self, data: bytes) -> bool:
        return self.client_max_packet_size is None or len(data) <= self.client_max_packet_size

    def unacknowledged(self) -> list[Outgoing]:
        """Deliveries the client has not taken responsibility for, in flight then queued."""
        return [*self.inflight.values(), *(self.queued or ())]

    # -- time ----------------------------------------------------------------------------------

    def granted_keepalive(self, asked: int) -> int:
        """The keepalive this connection is held to.

        MQTT 5 can tell the client another value (Server Keep Alive in the CONNACK), so
        ``server_keep_alive`` is imposed and ``max_keep_alive`` caps a longer (or 0: none)
        request. MQTT 3.1.1 cannot: the client pings at its own interval and its will is due
        1.5 x that after silence, so its own value is kept (a client asking for more than
        ``max_keep_alive`` is refused at CONNECT: :meth:`keepalive_refused`).
        """
        if self.version != 5:
            return asked
        keepalive = self.limits.server_keep_alive or asked
        cap = self.limits.max_keep_alive
        if cap and (keepalive == 0 or keepalive > cap):
            keepalive = cap
        return keepalive

    def keepalive_refused(self, asked: int) -> bool:
        """An MQTT 3.1.1 client asking for a keepalive above the cap (0 is no keepalive at all,
        so above any cap), as mosquitto's ``max_keepalive``: CONNACK return code 2."""
        cap = self.limits.max_keep_alive
        return self.version != 5 and bool(cap) and (asked == 0 or asked > (cap or 0))

    def deadline(self) -> float | None:
        """When the connection is dead for lack of packets (1.5 x keepalive), or None."""
        keepalive = self.keepalive
        if not keepalive or self.state is State.CLOSED:
            return None
        return self.last_received + 1.5 * keepalive

    # -- bytes out -----------------------------------------------------------------------------

    def _send(self, packet: Packet) -> None:
        self._out.append(encode(packet, self.version))

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data


def _qos_of(outgoing: Outgoing) -> int:
    return int(outgoing.encoder.qos)


_V3_CONNACK_CODES = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})

_HANDLERS: dict[type, Any] = {
    Publish: Connection._on_publish,
    Puback: Connection._on_puback,
    Pubrec: Connection._on_pubrec,
    Pubrel: Connection._on_pubrel,
    Pubcomp: Connection._on_pubcomp,
    Subscribe: Connection._on_subscribe,
    Unsubscribe: Connection._on_unsubscribe,
    Pingreq: Connection._on_ping,
    Disconnect: Connection._on_disconnect,
}
