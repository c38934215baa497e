"""Prepared publishes: a PUBLISH encoded once for every subscriber of a record (fan-out)."""

from __future__ import annotations

from .packets import EMPTY_PROPERTIES, Properties
from .properties import _BYTES, _enc_props, _read_varint, _varint


class PreparedPublish:
    """A PUBLISH encoded once for many subscribers of the same protocol version.

    Everything but the first byte (DUP/QoS/RETAIN) and the packet identifier is shared;
    :meth:`packet` splices those in with a single ``join``. Subscription identifiers need their
    own ``PreparedPublish``; a topic alias (per connection) is spliced in by :meth:`aliased`
    from the same shared parts.
    """

    __slots__ = ("_head", "_props", "_qos0", "_tail", "_topic_field", "payload", "qos", "topic")

    def __init__(
        self,
        head: bytes,
        tail: bytes,
        qos: int,
        qos0: bytes | None,
        topic: str = "",
        topic_field: bytes = b"",
        props: bytes = b"",
        payload: bytes = b"",
    ) -> None:
        self._head = head  # remaining length + topic
        self._tail = tail  # properties + payload
        self._qos0 = qos0
        self._topic_field = topic_field  # length-prefixed topic name
        self._props = props  # MQTT 5 property block without its length
        #: The application payload.
        self.payload = payload
        #: QoS the packet is sent with.
        self.qos: int = qos
        #: The topic name (the key of a connection's outbound topic aliases).
        self.topic = topic

    def packet(
        self, packet_id: int | None = None, *, dup: bool = False, retain: bool = False
    ) -> bytes:
        """The complete PUBLISH bytes; ``packet_id`` is required (1..65535) iff ``qos`` > 0."""
        qos = self.qos
        if not qos:
            if retain:
                return b"".join((b"\x31", self._head, self._tail))
            return self._qos0  # type: ignore[return-value]
        if not packet_id:
            raise ValueError("QoS 1/2 PUBLISH needs a packet id")
        first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
        return b"".join((_BYTES[first], self._head, packet_id.to_bytes(2, "big"), self._tail))

    def aliased(
        self,
        alias: int,
        with_topic: bool,
        packet_id: int | None = None,
        *,
        dup: bool = False,
        retain: bool = False,
    ) -> bytes:
        """The MQTT 5 PUBLISH with Topic Alias ``alias`` (1..65535): with the topic name to set
        the alias (``with_topic``), or with an empty topic name to use it."""
        qos = self.qos
        if qos and not packet_id:
            raise ValueError("QoS 1/2 PUBLISH needs a packet id")
        topic_field = self._topic_field if with_topic else b"\x00\x00"
        props = b"\x23" + alias.to_bytes(2, "big") + self._props
        props_field = _varint(len(props)) + props
        remaining = len(topic_field) + (2 if qos else 0) + len(props_field) + len(self.payload)
        first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
        pid = packet_id.to_bytes(2, "big") if qos and packet_id else b""
        return b"".join(
            (_BYTES[first], _varint(remaining), topic_field, pid, props_field, self.payload)
        )


def prepare_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    properties: Properties = EMPTY_PROPERTIES,
    version: int = 5,
) -> PreparedPublish:
    """Encode the shared part of a PUBLISH once; see :class:`PreparedPublish`."""
    if not 0 <= qos <= 2:
        raise ValueError(f"invalid QoS {qos}")
    t = topic.encode()
    if len(t) > 65535:
        raise ValueError("topic longer than 65535 bytes")
    topic_field = len(t).to_bytes(2, "big") + t
    payload = bytes(payload)
    props = b""
    if version >= 5:
        props_field = _enc_props(properties)
        props = props_field[_read_varint(props_field, 0, len(props_field))[1] :]
        tail = props_field + payload
    else:
        tail = payload
    remaining = len(topic_field) + len(tail) + (2 if qos else 0)
    head = _varint(remaining) + topic_field
    qos0 = b"".join((b"\x30", head, tail)) if not qos else None
    return PreparedPublish(head, tail, qos, qos0, topic, topic_field, props, payload)
