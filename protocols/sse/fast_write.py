"""A shortcut below Hypercorn's HTTP/1.1 stack for the one write an event stream repeats.

Measured (bench/sse_fanout.py, cProfile of a 2,000-client fan-out): once a stream's response
has started, each body chunk still passes ``HTTPStream.app_send`` -> ``Body`` ->
``H11Protocol.stream_send`` -> ``h11.Connection.send`` -> ``TCPServer.protocol_send`` (a lock
and a drain) before the one ``transport.write`` that matters; that Python is most of the gap to
a raw asyncio server. For HTTP/1.1 chunked responses a data chunk is stateless framing
(``<hex length>\\r\\n<data>\\r\\n``, exactly h11's ``ChunkedWriter``), so it can be written to
the transport directly while nothing else is writing and the transport has room. Anything else
(HTTP/2, a busy or full connection, another Hypercorn version) uses the ASGI ``send``:
:func:`chunk_writer` only returns a writer when every piece is exactly what it expects, and
the response's end still goes through ASGI so h11 and Hypercorn finish it normally.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.web.server import Exchange

# Below this many bytes waiting in the transport we write directly; above it the stream's task
# writes through ASGI and waits for the socket (which is also how a slow client is detected).
DIRECT_LIMIT = 64 * 1024

try:
    import h11
    from h11._writers import ChunkedWriter
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream
except ImportError:  # pragma: no cover - another server or version: ASGI only
    HTTPStream = H11Protocol = TCPServer = ChunkedWriter = None  # type: ignore[assignment,misc]


class OwnWriter:
    """A connection of Edgebridge's own (the lean SSE listener) whose ``send`` is a bound method:
    it writes body bytes itself, so there is no server stack to bypass."""

    __slots__ = ()

    def try_write(self, data: bytes) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class ChunkWriter:
    __slots__ = ("_connection", "_lock", "_transport")

    def __init__(
        self, transport: asyncio.WriteTransport, lock: asyncio.Lock, connection: Any
    ) -> None:
        self._transport = transport
        self._lock = lock
        self._connection = connection

    def try_write(self, data: bytes) -> bool:
        """Write ``data`` as one chunk now, or return False to use ASGI ``send`` instead."""
        transport = self._transport
        if (
            self._lock.locked()
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_LIMIT
            or self._connection.our_state is not h11.SEND_BODY
        ):
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True


def chunk_writer(send: Any) -> ChunkWriter | OwnWriter | Exchange | None:
    """A direct writer for the response ``send`` belongs to, if it is a plain HTTP/1.1 chunked
    response on Hypercorn's asyncio TCP server, or the lean listener's own connection; else None."""
    owner = getattr(send, "__self__", None)
    if isinstance(owner, OwnWriter | Exchange):
        return owner  # our own servers: try_write is part of their interface
    if HTTPStream is None:
        return None
    stream = getattr(send, "__self__", None)
    if type(stream) is not HTTPStream:
        return None
    protocol = getattr(stream.send, "__self__", None)
    if type(protocol) is not H11Protocol:
        return None
    server = getattr(protocol.send, "__self__", None)
    if type(server) is not TCPServer:
        return None
    connection = getattr(protocol, "connection", None)
    if type(connection) is not h11.Connection or type(connection._writer) is not ChunkedWriter:
        return None
    # (Over TLS the transport encrypts whatever it is given; the framing is the same.) uvloop's
    # transports are not asyncio.WriteTransport subclasses, so check for what is used.
    transport = server.writer.transport
    if not all(hasattr(transport, m) for m in ("write", "is_closing", "get_write_buffer_size")):
        return None
    return ChunkWriter(transport, server.send_lock, connection)
