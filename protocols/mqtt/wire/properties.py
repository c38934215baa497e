"""MQTT 5 properties and the primitive fields every packet is made of, both ways.

The property table (identifier -> attribute, wire type, packets it may appear in), bounds-checked
readers of the primitive types, the property block decoder (with a cache of blocks by their raw
bytes) and encoder (with a cache by object), and the primitive writers the encoders share.
"""

from __future__ import annotations

from typing import Any

from .packets import EMPTY_PROPERTIES, MQTTProtocolError, Properties, ReasonCode

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
# Primitive writers and the property block encoder
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
