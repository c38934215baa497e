"""Bytes to packets: the incremental :class:`Decoder` of one connection (see codec.py)."""

from __future__ import annotations

from collections.abc import Callable

from .fastinit import maker
from .packets import (
    EMPTY_PROPERTIES,
    Auth,
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
    Subscription,
    Unsuback,
    Unsubscribe,
)
from .properties import (
    _CONNACK,
    _CONNECT,
    _PUBLISH,
    _WILL,
    MAX_PACKET_SIZE,
    _malformed,
    _protocol,
    _read_bin,
    _read_props,
    _read_str,
)

# Reason codes each packet may carry (MQTT 5).
_RC_CONNACK = frozenset(
    {0x00, *range(0x80, 0x8B), 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}
)
_RC_CONNACK_V3 = frozenset(range(6))
_RC_PUBACK = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
_RC_PUBREL = frozenset({0x00, 0x92})
_RC_SUBACK = frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2})
_RC_SUBACK_V3 = frozenset({0x00, 0x01, 0x02, 0x80})
_RC_UNSUBACK = frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91})
_RC_DISCONNECT = frozenset(
    {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90}
    | set(range(0x93, 0xA3))
)
_RC_AUTH = frozenset({0x00, 0x18, 0x19})

# Required fixed-header flags for every type but PUBLISH.
_FIXED_FLAGS = (0, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
_CLIENT_TO_SERVER = frozenset({1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15})
_SERVER_TO_CLIENT = frozenset({2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15})


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------


class Decoder:
    """Incremental MQTT packet decoder for one connection.

    :param max_packet_size: largest whole packet accepted (fixed header included); a bigger one
        raises ``PACKET_TOO_LARGE`` as soon as its length is known, before it is buffered.
    :param version: 4 (3.1.1) or 5 if already known; ``None`` for a server, which learns it from
        the CONNECT packet (that must come first).
    :param server: True (default) decodes what a client sends and refuses server-only packets
        (CONNACK, SUBACK, UNSUBACK, PINGRESP) and a second CONNECT; False decodes what a server
        sends (for clients and tests) and needs ``version``.
    """

    __slots__ = (
        "_buf",
        "_connected",
        "_error",
        "_handlers",
        "_need",
        "_server",
        "max_packet_size",
        "version",
    )

    def __init__(
        self,
        max_packet_size: int = MAX_PACKET_SIZE,
        version: int | None = None,
        *,
        server: bool = True,
    ) -> None:
        if version not in (None, 3, 4, 5):
            raise ValueError(f"unknown MQTT version {version!r}")
        if version is None and not server:
            raise ValueError("a client-side decoder needs the protocol version")
        #: Largest whole packet accepted, in bytes.
        self.max_packet_size: int = max_packet_size
        #: 4 (3.1.1, also for legacy 3.1) or 5; ``None`` until CONNECT has been decoded.
        self.version: int | None = 4 if version == 3 else version
        self._server = server
        self._connected = False
        self._buf = bytearray()
        self._need = 0  # bytes the buffered packet needs in total, 0 = unknown
        self._error: MQTTProtocolError | None = None
        # Shared per direction (not per instance): a server holds one decoder per connection,
        # and 16 bound methods each would cost ~1.5 KiB of every idle connection.
        self._handlers = _SERVER_HANDLERS if server else _CLIENT_HANDLERS

    def feed(self, data: bytes) -> list[Packet]:
        """Add received bytes; return the packets they complete, in order (often empty).

        Raises :class:`MQTTProtocolError` for any malformed or forbidden input; packets completed
        earlier in the same call are then on the exception as ``packets``.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        self._need = 0
        out: list[Packet] = []
        pos = 0
        n = len(data)
        handlers = self._handlers
        limit = self.max_packet_size
        try:
            while n - pos >= 2:
                b0 = data[pos]
                length = data[pos + 1]
                hdr = 2
                if length & 0x80:
                    length &= 0x7F
                    shift = 7
                    complete = False
                    while pos + hdr < n:
                        b = data[pos + hdr]
                        hdr += 1
                        length |= (b & 0x7F) << shift
                        if not b & 0x80:
                            complete = True
                            break
                        if hdr == 5:
                            raise _malformed("remaining length longer than 4 bytes")
                        shift += 7
                    if not complete:
                        break
                total = hdr + length
                if total > limit:
                    raise MQTTProtocolError(
                        ReasonCode.PACKET_TOO_LARGE,
                        f"packet of {total} bytes exceeds the maximum of {limit}",
                    )
                if pos + total > n:
                    self._need = total
                    break
                out.append(handlers[b0 >> 4](self, b0 & 0x0F, data, pos + hdr, pos + total))
                pos += total
        except MQTTProtocolError as exc:
            self._fail(exc, out)
            raise
        except (IndexError, ValueError, TypeError, OverflowError) as exc:  # pragma: no cover
            # Safety net: every reader checks bounds, so this means a codec bug.
            err = _malformed(f"undecodable packet ({type(exc).__name__}: {exc})")
            self._fail(err, out)
            raise err from exc
        if pos < n:
            buf += memoryview(data)[pos:]
        return out

    def _fail(self, exc: MQTTProtocolError, out: list[Packet]) -> None:
        exc.packets = tuple(out)  # type: ignore[attr-defined]
        self._error = exc
        self._buf.clear()

    # -- per-type decoders: (flags, data, start of variable header, end of packet) -> packet --

    def _check_flags(self, ptype: int, flags: int) -> None:
        if flags != _FIXED_FLAGS[ptype]:
            raise _malformed(f"reserved fixed-header flags 0x{flags:X} for packet type {ptype}")

    def _refuse(self, ptype: int, flags: int, data: bytes, pos: int, end: int) -> Packet:
        if ptype == 0:
            raise _malformed("reserved packet type 0")
        if ptype == 15:
            raise _protocol("AUTH packet in MQTT 3.1.1")
        raise _protocol(f"packet type {ptype} not allowed in this direction")

    def _v5(self) -> bool:
        v = self.version
        if v is None:
            raise _protocol("first packet must be CONNECT")
        return v == 5

    def _decode_1(self, flags: int, data: bytes, pos: int, end: int) -> Connect:
        if self._connected:
            raise _protocol("second CONNECT packet")
        self._check_flags(1, flags)
        name, pos = _read_str(data, pos, end)
        if pos + 4 > end:
            raise _malformed("truncated CONNECT variable header")
        level = data[pos]
        cflags = data[pos + 1]
        keepalive = (data[pos + 2] << 8) | data[pos + 3]
        pos += 4
        if name == "MQTT":
            if level not in (4, 5):
                raise MQTTProtocolError(
                    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, f"protocol level {level}"
                )
        elif name == "MQIsdp" and level == 3:
            pass
        else:
            raise MQTTProtocolError(
                ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, f"protocol {name!r} level {level}"
            )
        v5 = level == 5
        if cflags & 0x01:
            raise _malformed("reserved CONNECT flag set")
        will = cflags & 0x04
        will_qos = (cflags >> 3) & 3
        will_retain = bool(cflags & 0x20)
        if will_qos == 3:
            raise _malformed("will QoS 3")
        if not will and (will_qos or will_retain):
            raise _malformed("will QoS/retain set without a will")
        has_password = cflags & 0x40
        has_username = cflags & 0x80
        if has_password and not has_username and not v5:
            raise _protocol("password without user name (MQTT 3.1.1)")
        props = EMPTY_PROPERTIES
        if v5:
            props, pos = _read_props(data, pos, end, _CONNECT)
            if props.authentication_data is not None and props.authentication_method is None:
                raise _protocol("authentication data without authentication method")
        client_id, pos = _read_str(data, pos, end)
        will_topic: str | None = None
        will_payload = b""
        will_props = EMPTY_PROPERTIES
        if will:
            if v5:
                will_props, pos = _read_props(data, pos, end, _WILL)
            will_topic, pos = _read_str(data, pos, end)
            if not will_topic or "+" in will_topic or "#" in will_topic:
                raise MQTTProtocolError(ReasonCode.TOPIC_NAME_INVALID, "invalid will topic")
            will_payload, pos = _read_bin(data, pos, end)
        username: str | None = None
        password: bytes | None = None
        if has_username:
            username, pos = _read_str(data, pos, end)
        if has_password:
            password, pos = _read_bin(data, pos, end)
        if pos != end:
            raise _malformed("trailing bytes after CONNECT payload")
        self.version = 5 if v5 else 4
        self._connected = True
        return Connect(
            protocol_level=level,
            client_id=client_id,
            clean_start=bool(cflags & 0x02),
            keepalive=keepalive,
            will_topic=will_topic,
            will_payload=will_payload,
            will_qos=will_qos,
            will_retain=will_retain,
            will_properties=will_props,
            username=username,
            password=password,
            properties=props,
        )

    def _decode_2(self, flags: int, data: bytes, pos: int, end: int) -> Connack:
        v5 = self._v5()
        self._check_flags(2, flags)
        if pos + 2 > end:
            raise _malformed("truncated CONNACK")
        ack = data[pos]
        rc = data[pos + 1]
        pos += 2
        if ack & 0xFE:
            raise _malformed("reserved CONNACK acknowledge flags set")
        props = EMPTY_PROPERTIES
        if v5:
            if rc not in _RC_CONNACK:
                raise _protocol(f"invalid CONNACK reason code 0x{rc:02X}")
            if pos < end:
                props, pos = _read_props(data, pos, end, _CONNACK)
        elif rc not in _RC_CONNACK_V3:
            raise _protocol(f"invalid CONNACK return code {rc}")
        if pos != end:
            raise _malformed("trailing bytes after CONNACK")
        return Connack(session_present=bool(ack), reason_code=rc, properties=props)

    def _decode_3(self, flags: int, data: bytes, pos: int, end: int) -> Publish:
        v5 = self._v5()
        qos = (flags >> 1) & 3
        if qos == 3:
            raise _malformed("PUBLISH with QoS 3")
        dup = bool(flags & 0x08)
        if dup and not qos:
            raise _malformed("DUP flag set on a QoS 0 PUBLISH")
        topic, pos = _read_str(data, pos, end)
        if "+" in topic or "#" in topic:
            raise MQTTProtocolError(ReasonCode.TOPIC_NAME_INVALID, "wildcard in PUBLISH topic")
        packet_id: int | None = None
        if qos:
            if pos + 2 > end:
                raise _malformed("truncated packet identifier")
            packet_id = (data[pos] << 8) | data[pos + 1]
            if not packet_id:
                raise _malformed("packet identifier 0")
            pos += 2
        props = EMPTY_PROPERTIES
        if v5:
            props, pos = _read_props(data, pos, end, _PUBLISH)
            if props is not EMPTY_PROPERTIES:
                if not topic and props.topic_alias is None:
                    raise _protocol("empty topic name without a topic alias")
                if self._server and props.subscription_identifiers:
                    raise _protocol("client PUBLISH with a subscription identifier")
            elif not topic:
                raise _protocol("empty topic name without a topic alias")
        elif not topic:
            raise _protocol("empty PUBLISH topic name")
        return _new_publish(topic, data[pos:end], qos, bool(flags & 1), dup, packet_id, props)

    def _decode_ack(
        self, ptype: int, flags: int, data: bytes, pos: int, end: int, codes: frozenset[int]
    ) -> tuple[int, int, Properties]:
        v5 = self._v5()
        self._check_flags(ptype, flags)
        if pos + 2 > end:
            raise _malformed("truncated packet identifier")
        packet_id = (data[pos] << 8) | data[pos + 1]
        if not packet_id:
            raise _malformed("packet identifier 0")
        pos += 2
        rc = 0
        props = EMPTY_PROPERTIES
        if pos < end:
            if not v5:
                raise _malformed("trailing bytes after packet identifier")
            rc = data[pos]
            if rc not in codes:
                raise _protocol(f"invalid reason code 0x{rc:02X}")
            pos += 1
            if pos < end:
                props, pos = _read_props(data, pos, end, 1 << ptype)
                if pos != end:
                    raise _malformed("trailing bytes after properties")
        return packet_id, rc, props

    def _decode_4(self, flags: int, data: bytes, pos: int, end: int) -> Puback:
        return Puback(*self._decode_ack(4, flags, data, pos, end, _RC_PUBACK))

    def _decode_5(self, flags: int, data: bytes, pos: int, end: int) -> Pubrec:
        return Pubrec(*self._decode_ack(5, flags, data, pos, end, _RC_PUBACK))

    def _decode_6(self, flags: int, data: bytes, pos: int, end: int) -> Pubrel:
        return Pubrel(*self._decode_ack(6, flags, data, pos, end, _RC_PUBREL))

    def _decode_7(self, flags: int, data: bytes, pos: int, end: int) -> Pubcomp:
        return Pubcomp(*self._decode_ack(7, flags, data, pos, end, _RC_PUBREL))

    def _packet_id_and_props(
        self, ptype: int, flags: int, data: bytes, pos: int, end: int
    ) -> tuple[int, Properties, int, bool]:
        v5 = self._v5()
        self._check_flags(ptype, flags)
        if pos + 2 > end:
            raise _malformed("truncated packet identifier")
        packet_id = (data[pos] << 8) | data[pos + 1]
        if not packet_id:
            raise _malformed("packet identifier 0")
        pos += 2
        props = EMPTY_PROPERTIES
        if v5:
            props, pos = _read_props(data, pos, end, 1 << ptype)
        return packet_id, props, pos, v5

    def _decode_8(self, flags: int, data: bytes, pos: int, end: int) -> Subscribe:
        packet_id, props, pos, v5 = self._packet_id_and_props(8, flags, data, pos, end)
        subs: list[Subscription] = []
        reserved = 0xC0 if v5 else 0xFC
        while pos < end:
            topic_filter, pos = _read_str(data, pos, end)
            if not topic_filter:
                raise _protocol("empty topic filter")
            if pos >= end:
                raise _malformed("missing subscription options")
            opts = data[pos]
            pos += 1
            if opts & reserved:
                raise _malformed("reserved subscription option bits set")
            qos = opts & 3
            if qos == 3:
                raise _malformed("subscription QoS 3")
            retain_handling = (opts >> 4) & 3
            if retain_handling == 3:
                raise _protocol("retain handling 3")
            no_local = bool(opts & 0x04)
            if no_local and topic_filter.startswith("$share/"):
                raise _protocol("no local on a shared subscription")
            subs.append(
                Subscription(topic_filter, qos, no_local, bool(opts & 0x08), retain_handling)
            )
        if not subs:
            raise _protocol("SUBSCRIBE without topic filters")
        return Subscribe(packet_id, tuple(subs), props)

    def _decode_9(self, flags: int, data: bytes, pos: int, end: int) -> Suback:
        packet_id, props, pos, v5 = self._packet_id_and_props(9, flags, data, pos, end)
        codes = data[pos:end]
        allowed = _RC_SUBACK if v5 else _RC_SUBACK_V3
        for rc in codes:
            if rc not in allowed:
                raise _protocol(f"invalid SUBACK reason code 0x{rc:02X}")
        if not codes:
            raise _protocol("SUBACK without reason codes")
        return Suback(packet_id, tuple(codes), props)

    def _decode_10(self, flags: int, data: bytes, pos: int, end: int) -> Unsubscribe:
        packet_id, props, pos, _ = self._packet_id_and_props(10, flags, data, pos, end)
        filters: list[str] = []
        while pos < end:
            topic_filter, pos = _read_str(data, pos, end)
            if not topic_filter:
                raise _protocol("empty topic filter")
            filters.append(topic_filter)
        if not filters:
            raise _protocol("UNSUBSCRIBE without topic filters")
        return Unsubscribe(packet_id, tuple(filters), props)

    def _decode_11(self, flags: int, data: bytes, pos: int, end: int) -> Unsuback:
        packet_id, props, pos, v5 = self._packet_id_and_props(11, flags, data, pos, end)
        codes = data[pos:end]
        if not v5:
            if codes:
                raise _malformed("trailing bytes after UNSUBACK packet identifier")
            return Unsuback(packet_id)
        for rc in codes:
            if rc not in _RC_UNSUBACK:
                raise _protocol(f"invalid UNSUBACK reason code 0x{rc:02X}")
        if not codes:
            raise _protocol("UNSUBACK without reason codes")
        return Unsuback(packet_id, tuple(codes), props)

    def _decode_12(self, flags: int, data: bytes, pos: int, end: int) -> Pingreq:
        self._v5()
        self._check_flags(12, flags)
        if pos != end:
            raise _malformed("PINGREQ with a body")
        return _PINGREQ

    def _decode_13(self, flags: int, data: bytes, pos: int, end: int) -> Pingresp:
        self._v5()
        self._check_flags(13, flags)
        if pos != end:
            raise _malformed("PINGRESP with a body")
        return _PINGRESP

    def _reason_and_props(
        self, ptype: int, flags: int, data: bytes, pos: int, end: int, codes: frozenset[int]
    ) -> tuple[int, Properties]:
        v5 = self._v5()
        self._check_flags(ptype, flags)
        if pos == end:
            return 0, EMPTY_PROPERTIES
        if not v5:
            raise _malformed("DISCONNECT with a body (MQTT 3.1.1)")
        rc = data[pos]
        if rc not in codes:
            raise _protocol(f"invalid reason code 0x{rc:02X}")
        pos += 1
        props = EMPTY_PROPERTIES
        if pos < end:
            props, pos = _read_props(data, pos, end, 1 << ptype)
            if pos != end:
                raise _malformed("trailing bytes after properties")
        return rc, props

    def _decode_14(self, flags: int, data: bytes, pos: int, end: int) -> Disconnect:
        return Disconnect(*self._reason_and_props(14, flags, data, pos, end, _RC_DISCONNECT))

    def _decode_15(self, flags: int, data: bytes, pos: int, end: int) -> Auth:
        if not self._v5():
            raise _protocol("AUTH packet in MQTT 3.1.1")
        return Auth(*self._reason_and_props(15, flags, data, pos, end, _RC_AUTH))


def _handler_table(allowed: frozenset[int]) -> tuple[Callable[..., Packet], ...]:
    """Unbound per-type decoders (called as ``handler(decoder, flags, data, pos, end)``)."""
    table: list[Callable[..., Packet]] = []
    for ptype in range(16):
        method = getattr(Decoder, f"_decode_{ptype}", None)
        if method is None or ptype not in allowed:

            def method(
                decoder: Decoder, flags: int, data: bytes, pos: int, end: int, _t: int = ptype
            ) -> Packet:
                return decoder._refuse(_t, flags, data, pos, end)

        table.append(method)
    return tuple(table)


_SERVER_HANDLERS = _handler_table(_CLIENT_TO_SERVER)
_CLIENT_HANDLERS = _handler_table(_SERVER_TO_CLIENT)

_PINGREQ = Pingreq()
_PINGRESP = Pingresp()

_new_publish = maker(Publish)  # the decoder makes one per PUBLISH received: the fast way
