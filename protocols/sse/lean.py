"""The lean SSE listener (``[listeners.sse]``): event streams on a raw asyncio ``Protocol``.

Hypercorn costs 17-18 KiB per open stream before the app holds anything (bench/sse_fanout.py,
do-nothing app), more than the whole per-stream budget. This listener speaks only what an event
stream needs from HTTP/1.1 and leaves every SSE semantic to :class:`SseFrontend`: it reads one
request head into an ASGI scope and calls the same ``handle(scope, receive, send)`` the Hypercorn
path is mounted with, so authentication, authorization, resume, snapshots, CORS, problem
documents, slow-client closes and metrics are one implementation on both listeners.

What it saves per connection: no HTTP state machine, send lock, timers or task per connection
beyond the stream's own; ``send`` writes to the transport, the response body is delimited by
the connection's close (no chunk framing: a stream never ends normally), and the client's
departure comes from ``connection_lost`` instead of a task waiting for ``http.disconnect``.
No TLS, no HTTP/2, no keep-alive: use the HTTP listener for those (docs/sse.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Protocol

import structlog

from bridge.model.config import ListenerSettings
from bridge.telemetry import metrics
from bridge.web.listener import LISTEN_BACKLOG, listening_socket
from protocols.sse.fast_write import OwnWriter
from protocols.sse.request_head import BadHead, head_length, parse_head
from protocols.sse.responses import send_problem
from protocols.sse.stream import CloseReason, EventStream


class RefusalCounter(Protocol):
    streams_refused: int


class StreamHandler(Protocol):
    """What the lean listener needs of the SSE front-end (an ASGI-shaped handler and counters);
    a Protocol, so this module does not import the front-end that imports it."""

    name: str

    @property
    def metrics(self) -> RefusalCounter: ...

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None: ...


log = structlog.get_logger(__name__)

# A scope key the handler calls with the stream once it is open (see SseFrontend._serve).
SCOPE_ON_STREAM = "edgebridge.sse.on_stream"
# A connection that has not sent a complete head by then is closed (slowloris).
HEAD_TIMEOUT_S = 10.0


class LeanListener:
    def __init__(self, frontend: StreamHandler, settings: ListenerSettings) -> None:
        self.frontend = frontend
        self.settings = settings
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, reuse_port: bool = False) -> None:
        sock = listening_socket(self.settings.host, self.settings.port, reuse_port)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: LeanConnection(self.frontend), sock=sock, backlog=LISTEN_BACKLOG
        )
        self.port = sock.getsockname()[1]
        log.info("listener.started", protocol="sse", host=self.settings.host, port=self.port)

    def stop(self) -> None:
        """Stop accepting; open streams are ended by the front-end (clients resume by id)."""
        if self._server is not None:
            self._server.close()


async def _no_body() -> dict[str, Any]:
    # The handler never reads a body; the ASGI signature wants a receive all the same.
    return {"type": "http.request", "body": b"", "more_body": False}


def _response_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode("ascii"))]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines)


class LeanConnection(asyncio.Protocol, OwnWriter):
    """One client: its request head, then the ASGI ``send`` of its one response."""

    __slots__ = (
        "_buffer",
        "_drain",
        "_frontend",
        "_head_only",
        "_lost",
        "_paused",
        "_stream",
        "_task",
        "_timer",
        "_transport",
    )

    def __init__(self, frontend: StreamHandler) -> None:
        self._frontend = frontend
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._buffer: bytearray | None = bytearray()  # None once the head is read
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stream: EventStream | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False  # the transport's buffer is above its high-water mark
        self._lost = False
        self._head_only = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer is None:
            return  # after the head: an event stream's request has nothing more to say
        buffer += data
        try:
            length = head_length(buffer)
            if not length:
                return
            scope = parse_head(bytes(buffer[:length]), self._transport.get_extra_info("peername"))
        except BadHead as bad:
            self._refuse(bad)
            return
        self._head_read()
        scope[SCOPE_ON_STREAM] = self._attach
        self._head_only = scope["method"] == "HEAD"
        self._task = asyncio.get_running_loop().create_task(self._run(scope))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._head_read()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)  # the stream is closed just below; its pump then returns
        if self._stream is not None:
            self._stream.close(CloseReason.CLIENT_GONE)

    # -- the response (ASGI send, and the stream's direct writes) --------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        if self._lost:
            return  # as Hypercorn does: the stream itself was closed by connection_lost
        transport = self._transport
        if message["type"] == "http.response.start":
            transport.write(_response_head(message["status"], message.get("headers", ())))
            return
        body = message.get("body", b"")
        if body and not self._head_only:
            transport.write(body)
        if not message.get("more_body", False):
            transport.close()  # after what is buffered: the response ends with the connection
        elif self._paused:
            # Waiting here is what EventStream sees as "sending": how a slow client shows.
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def try_write(self, data: bytes) -> bool:
        if self._paused or self._lost or self._drain is not None or self._transport.is_closing():
            return False
        self._transport.write(data)
        return True

    # -- internals -------------------------------------------------------------------------------

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self._frontend.handle(scope, _no_body, self.send)
        except Exception:  # a bug must cost this connection only
            log.exception("sse.lean_handler_failed", path=scope["path"])
        finally:
            self._task = None
            stream = self._stream
            if stream is not None and stream.reason == CloseReason.SLOW:
                self._transport.abort()  # its unread bytes would otherwise stay buffered
            else:
                self._transport.close()

    def _attach(self, stream: EventStream) -> None:
        self._stream = stream
        if self._lost:  # gone while the stream was being opened
            stream.close(CloseReason.CLIENT_GONE)

    def _head_read(self) -> None:
        self._buffer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timeout(self) -> None:
        self._timer = None
        self._refuse(
            BadHead(408, "request-timeout", f"no complete request head within {HEAD_TIMEOUT_S} s")
        )

    def _refuse(self, bad: BadHead) -> None:
        """A head we cannot serve: a problem document, then close this connection only."""
        self._head_read()
        peer = self._transport.get_extra_info("peername")
        log.info(
            "sse.bad_request", status=bad.status, kind=bad.kind, detail=bad.detail, client=peer
        )
        self._frontend.metrics.streams_refused += 1
        metrics.rejected(self._frontend.name, bad.kind.replace("-", "_"))
        self._task = asyncio.get_running_loop().create_task(
            send_problem(self.send, bad.status, bad.kind, bad.detail, "")
        )
