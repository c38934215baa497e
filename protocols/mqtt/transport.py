"""The byte pipes a :class:`~protocols.mqtt.client.Client` sits on: TCP/TLS and WebSocket.

TCP is a bare :class:`asyncio.Protocol` (no streams, no task per connection): the asyncio
transport itself is the client's transport. MQTT over WebSocket is an ASGI handler mounted on
the shared HTTP listener (subprotocol ``mqtt``), adapted to the same small transport interface.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

import structlog

from bridge.edge.credentials import request_token
from bridge.edge.guard import AuthError

from .client import Client
from .host import ClientHost


class Listener(ClientHost[Client], Protocol):
    """The front-end that accepts connections (:class:`protocols.mqtt.frontend.MqttFrontend`)."""

    def opened(self, client: Client) -> None:
        """A connection was accepted (counted before its CONNECT)."""
        ...


log = structlog.get_logger(__name__)


class TcpProtocol(asyncio.Protocol):
    __slots__ = ("client", "frontend")

    def __init__(self, frontend: Listener) -> None:
        self.frontend = frontend
        self.client: Client | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
        self.client = Client(self.frontend, transport, remote)  # type: ignore[arg-type]
        self.frontend.opened(self.client)

    def data_received(self, data: bytes) -> None:
        assert self.client is not None
        self.client.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.client.connection_lost()


def websocket_close_code(reason_code: int) -> int:
    """The WebSocket close code (RFC 6455 7.4.1) fitting an MQTT reason code sent before it."""
    if reason_code < 0x80 or reason_code == 0x8E:  # normal; session taken over
        return 1000
    if reason_code == 0x95:  # packet too large
        return 1009
    if reason_code in (0x81, 0x82, 0x93, 0x94, 0x9A):  # malformed, protocol error, limits
        return 1002
    if reason_code in (0x8B, 0x8D):  # server shutting down, keep alive timeout
        return 1001
    return 1008  # policy: not authorized, quota exceeded, topic name invalid...


class WebSocketTransport:
    """Adapts an ASGI WebSocket to the client's transport interface."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._queue: deque[bytes | None] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._readable = asyncio.Event()
        self._readable.set()
        self.closed = False
        self.close_code = 1000
        # close_lingering: input is read and discarded until the peer's close, this long at most
        self.linger_s = 0.0

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._queue.append(data)
            self._queued_bytes += len(data)
            self._wakeup.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.append(None)
            self._wakeup.set()

    def close_lingering(self, reason_code: int, linger_s: float) -> None:
        """After the server said why (a DISCONNECT or CONNACK already queued): a close frame
        with a fitting code, then the handler reads and discards until the peer's close frame
        (or ``linger_s``), so a client still sending reads the reason, not a reset."""
        if self.closed:
            return
        self.close_code = websocket_close_code(reason_code)
        self.linger_s = linger_s
        self._readable.set()
        self.close()

    def get_write_buffer_size(self) -> int:
        return self._queued_bytes

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    async def pump(self) -> None:
        """Send queued bytes as binary messages until closed."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                item = self._queue.popleft()
                if item is None:
                    await self._send({"type": "websocket.close", "code": self.close_code})
                    return
                chunks = [item]
                while self._queue and self._queue[0] is not None:
                    chunks.append(self._queue.popleft())  # type: ignore[arg-type]
                data = b"".join(chunks)
                self._queued_bytes -= len(data)
                await self._send({"type": "websocket.send", "bytes": data})


def websocket_handler(frontend: Listener, path: str) -> Any:
    """The ASGI app serving MQTT over WebSocket at ``path``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = dict(scope.get("headers", []))
        try:
            token = request_token(headers.get(b"authorization"), scope.get("query_string", b""))
        except AuthError as exc:
            log.warning("mqtt.ws_auth_refused", reason=exc.reason)
            await send({"type": "websocket.close", "code": 1008})
            return
        subprotocols = scope.get("subprotocols") or []
        chosen = next((p for p in subprotocols if p in ("mqtt", "mqttv3.1")), None)
        if subprotocols and chosen is None:
            await send({"type": "websocket.close", "code": 1002})
            return
        await send({"type": "websocket.accept", "subprotocol": chosen})
        transport = WebSocketTransport(send)
        client_addr = scope.get("client")
        remote = f"{client_addr[0]}:{client_addr[1]}" if client_addr else None
        client = Client(frontend, transport, remote)
        client.fallback_token = token
        frontend.opened(client)
        pump = asyncio.create_task(transport.pump())
        try:
            while not transport.closed:
                await transport._readable.wait()
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes") or (message.get("text") or "").encode()
                if data:
                    client.data_received(data)
        finally:
            transport.closed = True
            client.connection_lost()
            transport._queue.append(None)
            transport._wakeup.set()
            try:
                await asyncio.wait_for(pump, 2)
            except (TimeoutError, asyncio.CancelledError, Exception):  # the peer is gone
                pump.cancel()
            if transport.linger_s and message["type"] != "websocket.disconnect":
                await _discard_until_disconnect(receive, transport.linger_s)

    return app


async def _discard_until_disconnect(receive: Any, linger_s: float) -> None:
    """Returning from the ASGI app drops the socket: a client still sending would get a reset
    before it reads our close. Wait (bounded) for its close frame instead."""
    try:
        async with asyncio.timeout(linger_s):
            while (await receive())["type"] != "websocket.disconnect":
                pass
    except TimeoutError:
        pass
