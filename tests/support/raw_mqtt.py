"""Raw MQTT 5 bytes over asyncio streams, for clients that misbehave on purpose (a library
client would refuse to): hand-built CONNECT and SUBSCRIBE, a packet reader, small-window sockets."""

from __future__ import annotations

import asyncio
import socket
import struct


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def mqtt_connect(client_id: str, topic_alias_maximum: int | None = None) -> bytes:
    """An MQTT 5 CONNECT, clean start; the only property it can carry is Topic Alias Maximum."""
    props = b"" if topic_alias_maximum is None else b"\x22" + struct.pack(">H", topic_alias_maximum)
    return _packet(
        0x10,
        _utf8("MQTT")
        + bytes([5, 0x02])
        + struct.pack(">H", 60)
        + _varint(len(props))
        + props
        + _utf8(client_id),
    )


def mqtt_subscribe(topic_filter: str) -> bytes:
    return _packet(0x82, struct.pack(">H", 1) + b"\0" + _utf8(topic_filter) + b"\x00")


def mqtt_publish(topic: str, payload: bytes, qos: int, packet_id: int = 1) -> bytes:
    """An MQTT 5 PUBLISH without properties (paho ignores a PUBREC's reason code and sends
    PUBREL anyway, so a QoS 2 refusal can only be seen this way)."""
    ident = struct.pack(">H", packet_id) if qos else b""
    return _packet(0x30 | qos << 1, _utf8(topic) + ident + b"\x00" + payload)


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    kind = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return kind + await reader.readexactly(length)


async def _open(
    port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:  # a small window fills at once: the client really does not read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=1 << 16)
