"""Packets to bytes: :func:`encode` (see codec.py)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .packets import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from .properties import (
    _BYTES,
    _enc_bin,
    _enc_props,
    _enc_str,
    _u16,
    _varint,
)

# MQTT 5 CONNACK failure code -> nearest 3.1.1 return code (unlisted failures -> 3).
_CONNACK_V5_TO_V3 = {0x84: 1, 0x85: 2, 0x86: 4, 0x87: 5, 0x8A: 5, 0x8C: 4}

# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


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
