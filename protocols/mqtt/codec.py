"""Sans-io MQTT 3.1.1 / 5.0 codec: bytes in, packets out, and packets back to bytes.

No sockets, no asyncio. A server drives it like this::

    decoder = Decoder(max_packet_size=1 << 20)
    for packet in decoder.feed(chunk):        # any chunking; partial packets are buffered
        ...                                   # first packet is always a Connect
    writer.write(encode(Connack(), decoder.version))

Everything malformed raises :class:`MQTTProtocolError` (never ``IndexError`` and friends); its
``reason_code`` is what the server should answer with. After an error the decoder is dead: every
later ``feed`` raises the same error.

For fan-out, :func:`prepare_publish` encodes a PUBLISH once and splices in the per-subscriber
packet identifier / DUP / RETAIN bits with one ``join``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .fast_init import maker
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

__all__ = [
    "MAX_PACKET_SIZE",
    "MAX_REMAINING_LENGTH",
    "Decoder",
    "PreparedPublish",
    "encode",
    "prepare_publish",
]

#: Largest value the four-byte Remaining Length can hold.
MAX_REMAINING_LENGTH = 268_435_455
#: Largest possible whole packet (1 type byte + 4 length bytes + remaining length).
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5

_MALFORMED = ReasonCode.MALFORMED_PACKET
_PROTOCOL = ReasonCode.PROTOCOL_ERROR

# --------------------------------------------------------------------------------------------
# Property table
# --------------------------------------------------------------------------------------------

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)

# Contexts a property may appear in: bit (1 << packet type); bit 0 (type 0 is reserved) = Will.
_WILL = 1 << 0
_CONNECT = 1 << 1
_CONNACK = 1 << 2
_PUBLISH = 1 << 3
_PUBACK = 1 << 4
_PUBREC = 1 << 5
_PUBREL = 1 << 6
_PUBCOMP = 1 << 7
_SUBSCRIBE = 1 << 8
_SUBACK = 1 << 9
_UNSUBSCRIBE = 1 << 10
_UNSUBACK = 1 << 11
_DISCONNECT = 1 << 14
_AUTH = 1 << 15
_ALL = 0xFFFF

# identifier -> (Properties attribute, wire type, allowed contexts)
_PROP_SPECS: dict[int, tuple[str, int, int]] = {
    0x01: ("payload_format_indicator", _BYTE, _PUBLISH | _WILL),
    0x02: ("message_expiry_interval", _U32, _PUBLISH | _WILL),
    0x03: ("content_type", _STR, _PUBLISH | _WILL),
    0x08: ("response_topic", _STR, _PUBLISH | _WILL),
    0x09: ("correlation_data", _BIN, _PUBLISH | _WILL),
    0x0B: ("subscription_identifiers", _VARINT, _PUBLISH | _SUBSCRIBE),
    0x11: ("session_expiry_interval", _U32, _CONNECT | _CONNACK | _DISCONNECT),
    0x12: ("assigned_client_identifier", _STR, _CONNACK),
    0x13: ("server_keep_alive", _U16, _CONNACK),
    0x15: ("authentication_method", _STR, _CONNECT | _CONNACK | _AUTH),
    0x16: ("authentication_data", _BIN, _CONNECT | _CONNACK | _AUTH),
    0x17: ("request_problem_information", _BYTE, _CONNECT),
    0x18: ("will_delay_interval", _U32, _WILL),
    0x19: ("request_response_information", _BYTE, _CONNECT),
    0x1A: ("response_information", _STR, _CONNACK),
    0x1C: ("server_reference", _STR, _CONNACK | _DISCONNECT),
    0x1F: (
        "reason_string",
        _STR,
        _CONNACK
        | _PUBACK
        | _PUBREC
        | _PUBREL
        | _PUBCOMP
        | _SUBACK
        | _UNSUBACK
        | _DISCONNECT
        | _AUTH,
    ),
    0x21: ("receive_maximum", _U16, _CONNECT | _CONNACK),
    0x22: ("topic_alias_maximum", _U16, _CONNECT | _CONNACK),
    0x23: ("topic_alias", _U16, _PUBLISH),
    0x24: ("maximum_qos", _BYTE, _CONNACK),
    0x25: ("retain_available", _BYTE, _CONNACK),
    0x26: ("user_properties", _PAIR, _ALL),
    0x27: ("maximum_packet_size", _U32, _CONNECT | _CONNACK),
    0x28: ("wildcard_subscription_available", _BYTE, _CONNACK),
    0x29: ("subscription_identifier_available", _BYTE, _CONNACK),
    0x2A: ("shared_subscription_available", _BYTE, _CONNACK),
}
# Encoding order: by identifier (any order is legal; this one is deterministic).
_PROP_ENCODE: list[tuple[int, str, int]] = [(i, s[0], s[1]) for i, s in sorted(_PROP_SPECS.items())]
_BOOLEAN_PROPS = frozenset(
    {
        "payload_format_indicator",
        "request_problem_information",
        "request_response_information",
        "maximum_qos",
        "retain_available",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    }
)
_NONZERO_PROPS = frozenset({"receive_maximum", "maximum_packet_size", "topic_alias"})

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

# MQTT 5 CONNACK failure code -> nearest 3.1.1 return code (unlisted failures -> 3).
_CONNACK_V5_TO_V3 = {0x84: 1, 0x85: 2, 0x86: 4, 0x87: 5, 0x8A: 5, 0x8C: 4}

# Required fixed-header flags for every type but PUBLISH.
_FIXED_FLAGS = (0, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
_CLIENT_TO_SERVER = frozenset({1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15})
_SERVER_TO_CLIENT = frozenset({2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15})


def _malformed(message: str) -> MQTTProtocolError:
    return MQTTProtocolError(_MALFORMED, message)


def _protocol(message: str) -> MQTTProtocolError:
    return MQTTProtocolError(_PROTOCOL, message)


# --------------------------------------------------------------------------------------------
# Primitive readers: (data, pos, end) -> (value, new pos). All bounds-checked against ``end``.
# --------------------------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for _ in range(4):
        if pos >= end:
            raise _malformed("truncated variable byte integer")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise _malformed("variable byte integer longer than 4 bytes")


def _read_u16(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise _malformed("truncated two-byte integer")
    return (data[pos] << 8) | data[pos + 1], pos + 2


def _read_bin(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise _malformed("truncated length prefix")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise _malformed("length prefix runs past the packet")
    return data[pos + 2 : stop], stop


def _read_str(data: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise _malformed("truncated string length")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise _malformed("string runs past the packet")
    try:
        s = data[pos + 2 : stop].decode()
    except UnicodeDecodeError:
        raise _malformed("string is not well-formed UTF-8") from None
    if "\x00" in s:
        raise _malformed("string contains U+0000")
    return s, stop


def _read_props(data: bytes, pos: int, end: int, ctx: int) -> tuple[Properties, int]:
    if pos >= end:
        raise _malformed("missing property length")
    plen = data[pos]
    if plen == 0:
        return EMPTY_PROPERTIES, pos + 1
    if plen & 0x80:
        plen, pos = _read_varint(data, pos, end)
    else:
        pos += 1
    pend = pos + plen
    if pend > end:
        raise _malformed("properties run past the packet")
    if plen <= _CACHE_MAX_BYTES:
        raw = data[pos:pend]
        cache = _PROP_CACHE.get(ctx)
        if cache is None:
            cache = _PROP_CACHE[ctx] = {}
        props = cache.get(raw)
        if props is None:
            props = _parse_props(data, pos, pend, ctx)
            if len(cache) >= _CACHE_MAX_ENTRIES:
                cache.clear()
            cache[raw] = props
        return props, pend
    return _parse_props(data, pos, pend, ctx), pend


# Decoded property blocks, per context, keyed by their raw bytes: a client usually repeats the
# same properties (content type, user properties) on every PUBLISH, and Properties is immutable.
_PROP_CACHE: dict[int, dict[bytes, Properties]] = {}
_CACHE_MAX_BYTES = 256
_CACHE_MAX_ENTRIES = 1024


def _parse_props(data: bytes, pos: int, pend: int, ctx: int) -> Properties:
    kw: dict[str, Any] = {}
    while pos < pend:
        ident = data[pos]
        pos += 1
        spec = _PROP_SPECS.get(ident)
        if spec is None:
            raise _malformed(f"unknown property identifier 0x{ident:02X}")
        name, kind, allowed = spec
        if not allowed & ctx:
            raise _malformed(f"property {name} is not allowed in this packet")
        value: Any
        if kind == _STR:
            value, pos = _read_str(data, pos, pend)
        elif kind == _BYTE:
            if pos >= pend:
                raise _malformed("truncated byte property")
            value = data[pos]
            pos += 1
        elif kind == _U32:
            if pos + 4 > pend:
                raise _malformed("truncated four-byte integer")
            value = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
        elif kind == _U16:
            value, pos = _read_u16(data, pos, pend)
        elif kind == _PAIR:
            key, pos = _read_str(data, pos, pend)
            val, pos = _read_str(data, pos, pend)
            kw.setdefault(name, []).append((key, val))
            continue
        elif kind == _BIN:
            value, pos = _read_bin(data, pos, pend)
        else:  # _VARINT: subscription identifier
            value, pos = _read_varint(data, pos, pend)
            if value == 0:
                raise _protocol("subscription identifier 0")
            ids = kw.setdefault(name, [])
            if ids and ctx != _PUBLISH:
                raise _protocol("subscription identifier included more than once")
            ids.append(value)
            continue
        if name in kw:
            raise _protocol(f"property {name} included more than once")
        if name in _BOOLEAN_PROPS:
            if value > 1:
                raise _protocol(f"property {name} must be 0 or 1")
        elif name in _NONZERO_PROPS and value == 0:
            if name == "topic_alias":
                raise MQTTProtocolError(ReasonCode.TOPIC_ALIAS_INVALID, "topic alias 0")
            raise _protocol(f"property {name} must not be 0")
        kw[name] = value
    if "user_properties" in kw:
        kw["user_properties"] = tuple(kw["user_properties"])
    if "subscription_identifiers" in kw:
        kw["subscription_identifiers"] = tuple(kw["subscription_identifiers"])
    return Properties(**kw)


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

# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------

_BYTES = [bytes((i,)) for i in range(256)]


def _varint(n: int) -> bytes:
    if n < 128:
        return _BYTES[n]
    if n > MAX_REMAINING_LENGTH:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _enc_bin(b: bytes) -> bytes:
    if len(b) > 65535:
        raise ValueError("binary data longer than 65535 bytes")
    return len(b).to_bytes(2, "big") + b


def _enc_str(s: str) -> bytes:
    b = s.encode()
    if len(b) > 65535:
        raise ValueError("string longer than 65535 bytes")
    return len(b).to_bytes(2, "big") + b


# Encoded property blocks by object identity (the entry keeps the object alive, so its id cannot
# be reused): decoded properties are shared through _PROP_CACHE, and forwarding re-encodes them.
_ENC_CACHE: dict[int, tuple[Properties, bytes]] = {}


def _enc_props(props: Properties) -> bytes:
    if props is EMPTY_PROPERTIES:
        return b"\x00"
    hit = _ENC_CACHE.get(id(props))
    if hit is not None and hit[0] is props:
        return hit[1]
    encoded = _enc_props_uncached(props)
    if len(_ENC_CACHE) >= _CACHE_MAX_ENTRIES:
        _ENC_CACHE.clear()
    _ENC_CACHE[id(props)] = (props, encoded)
    return encoded


def _enc_props_uncached(props: Properties) -> bytes:
    parts: list[bytes] = []
    for ident, name, kind in _PROP_ENCODE:
        value = getattr(props, name)
        if value is None or value == ():
            continue
        head = _BYTES[ident]
        if kind == _STR:
            parts += (head, _enc_str(value))
        elif kind == _BYTE:
            parts += (head, _BYTES[value])
        elif kind == _U16:
            parts += (head, _u16(value))
        elif kind == _U32:
            parts += (head, value.to_bytes(4, "big"))
        elif kind == _BIN:
            parts += (head, _enc_bin(value))
        elif kind == _PAIR:
            for key, val in value:
                parts += (head, _enc_str(key), _enc_str(val))
        else:
            for sub_id in value:
                parts += (head, _varint(sub_id))
    body = b"".join(parts)
    return _varint(len(body)) + body


def _packet(first: int, body: bytes) -> bytes:
    return b"".join((_BYTES[first], _varint(len(body)), body))


def _enc_connect(p: Connect, v5: bool) -> bytes:
    level = p.protocol_level
    if level == 5:
        head = b"\x00\x04MQTT\x05"
    elif level == 4:
        head = b"\x00\x04MQTT\x04"
    elif level == 3:
        head = b"\x00\x06MQIsdp\x03"
    else:
        raise ValueError(f"unknown protocol level {level}")
    v5 = level == 5
    flags = 0x02 if p.clean_start else 0
    tail: list[bytes] = [_enc_str(p.client_id)]
    if p.will_topic is not None:
        flags |= 0x04 | (p.will_qos << 3) | (0x20 if p.will_retain else 0)
        if v5:
            tail.append(_enc_props(p.will_properties))
        tail += (_enc_str(p.will_topic), _enc_bin(p.will_payload))
    if p.username is not None:
        flags |= 0x80
        tail.append(_enc_str(p.username))
    if p.password is not None:
        flags |= 0x40
        tail.append(_enc_bin(p.password))
    parts = [head, _BYTES[flags], _u16(p.keepalive)]
    if v5:
        parts.append(_enc_props(p.properties))
    return _packet(0x10, b"".join(parts + tail))


def _enc_connack(p: Connack, v5: bool) -> bytes:
    rc = p.reason_code
    ack = _BYTES[1 if p.session_present else 0]
    if v5:
        return _packet(0x20, b"".join((ack, _BYTES[rc], _enc_props(p.properties))))
    if rc > 5:
        rc = _CONNACK_V5_TO_V3.get(rc, 3)
    return b"\x20\x02" + ack + _BYTES[rc]


def _enc_publish(p: Publish, v5: bool) -> bytes:
    qos = p.qos
    first = 0x30 | (qos << 1) | (0x08 if p.dup else 0) | (0x01 if p.retain else 0)
    topic = p.topic.encode()
    if len(topic) > 65535:
        raise ValueError("topic longer than 65535 bytes")
    parts = [len(topic).to_bytes(2, "big"), topic]
    if qos:
        if qos > 2 or not p.packet_id:
            raise ValueError("QoS 1/2 PUBLISH needs QoS <= 2 and a packet id")
        parts.append(p.packet_id.to_bytes(2, "big"))
    if v5:
        parts.append(_enc_props(p.properties))
    parts.append(p.payload)
    body = b"".join(parts)
    return b"".join((_BYTES[first], _varint(len(body)), body))


def _enc_ack(first: int, p: Puback | Pubrec | Pubrel | Pubcomp, v5: bool) -> bytes:
    pid = p.packet_id.to_bytes(2, "big")
    if not v5 or (p.reason_code == 0 and p.properties is EMPTY_PROPERTIES):
        return _BYTES[first] + b"\x02" + pid
    if p.properties is EMPTY_PROPERTIES:
        return b"".join((_BYTES[first], b"\x03", pid, _BYTES[p.reason_code]))
    return _packet(first, b"".join((pid, _BYTES[p.reason_code], _enc_props(p.properties))))


def _enc_subscribe(p: Subscribe, v5: bool) -> bytes:
    parts = [_u16(p.packet_id)]
    if v5:
        parts.append(_enc_props(p.properties))
    for sub in p.subscriptions:
        opts = sub.qos
        if v5:
            opts |= (
                (0x04 if sub.no_local else 0)
                | (0x08 if sub.retain_as_published else 0)
                | (sub.retain_handling << 4)
            )
        parts += (_enc_str(sub.topic_filter), _BYTES[opts])
    return _packet(0x82, b"".join(parts))


def _enc_suback(p: Suback, v5: bool) -> bytes:
    codes = bytes(p.reason_codes) if v5 else bytes(min(rc, 0x80) for rc in p.reason_codes)
    if v5:
        return _packet(0x90, b"".join((_u16(p.packet_id), _enc_props(p.properties), codes)))
    return _packet(0x90, _u16(p.packet_id) + codes)


def _enc_unsubscribe(p: Unsubscribe, v5: bool) -> bytes:
    parts = [_u16(p.packet_id)]
    if v5:
        parts.append(_enc_props(p.properties))
    parts += [_enc_str(f) for f in p.topic_filters]
    return _packet(0xA2, b"".join(parts))


def _enc_unsuback(p: Unsuback, v5: bool) -> bytes:
    if not v5:
        return b"\xb0\x02" + _u16(p.packet_id)
    return _packet(
        0xB0, b"".join((_u16(p.packet_id), _enc_props(p.properties), bytes(p.reason_codes)))
    )


def _enc_reason(first: int, p: Disconnect | Auth, v5: bool) -> bytes:
    if not v5 or (p.reason_code == 0 and p.properties is EMPTY_PROPERTIES):
        return _BYTES[first] + b"\x00"
    if p.properties is EMPTY_PROPERTIES:
        return b"".join((_BYTES[first], b"\x01", _BYTES[p.reason_code]))
    return _packet(first, _BYTES[p.reason_code] + _enc_props(p.properties))


def _enc_auth(p: Auth, v5: bool) -> bytes:
    if not v5:
        raise ValueError("AUTH does not exist in MQTT 3.1.1")
    return _enc_reason(0xF0, p, v5)


_ENCODERS: dict[type, Callable[[Any, bool], bytes]] = {
    Connect: _enc_connect,
    Connack: _enc_connack,
    Publish: _enc_publish,
    Puback: partial(_enc_ack, 0x40),
    Pubrec: partial(_enc_ack, 0x50),
    Pubrel: partial(_enc_ack, 0x62),
    Pubcomp: partial(_enc_ack, 0x70),
    Subscribe: _enc_subscribe,
    Suback: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    Unsuback: _enc_unsuback,
    Pingreq: lambda p, v5: b"\xc0\x00",
    Pingresp: lambda p, v5: b"\xd0\x00",
    Disconnect: partial(_enc_reason, 0xE0),
    Auth: _enc_auth,
}


def encode(packet: Packet, version: int = 5) -> bytes:
    """Serialize ``packet`` for a peer speaking ``version`` (3 or 4 = 3.1.1, 5 = 5.0).

    For 3.1.1, MQTT 5-only content (properties, reason codes of acknowledgements, DISCONNECT
    reasons) is dropped, and CONNACK / SUBACK failure codes are mapped to their 3.1.1 values.
    A CONNECT is encoded for its own ``protocol_level``. Values that cannot be represented
    (strings over 65535 bytes, QoS > 0 without a packet id, ...) raise ``ValueError``; the
    encoder otherwise trusts the caller.
    """
    try:
        enc = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not an MQTT packet: {packet!r}") from None
    return enc(packet, version >= 5)


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
