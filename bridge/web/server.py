"""The lean HTTP/1.1 + WebSocket server: an asyncio protocol that runs an ASGI app.

Bytes are parsed by :mod:`bridge.web.http1` (sans-io on httptools); the WebSocket protocol is
wsproto (sans-io). This module only moves bytes and ASGI messages, and keeps the clocks:

* keep-alive: an idle connection is closed after ``keep_alive_s``;
* slowloris: a head not complete ``head_timeout_s`` after its first byte is answered 408;
* pipelining: requests are answered one after the other, in order (the next one's events wait);
* ``Expect: 100-continue``: ``100 Continue`` goes out only when the app asks for the body, so an
  app that refuses a declared size (413) never invites the upload;
* a response that did not read its whole request body, or that says ``Connection: close``,
  closes the connection (the unread bytes are not the next request);
* HEAD: the head of the response, no body;
* the client's departure: ``http.disconnect`` at once, from ``connection_lost``;
* :meth:`Exchange.try_write`: a body chunk written straight to the transport when nothing is
  queued (an event stream's hot write; see protocols/sse/stream.py), with no private internals
  of anyone's library;
* graceful drain: :meth:`LeanServer.drain` stops accepting, closes idle connections and waits for
  open exchanges, then cuts what is left.

Why our own instead of Hypercorn on this path: docs/decisions.md ("One HTTP edge").
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws

from bridge.web import http1
from bridge.web.direct import DirectHandler, DirectRequest
from bridge.web.problem import PROBLEM_TYPE, Problem

log = structlog.get_logger(__name__)

# One dict for every scope's "asgi" (nobody writes to it): ~200 bytes less per event stream,
# whose scope lives as long as the stream.
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
# Which direct handler (bridge/web/direct.py) answers a request head, if any.
DirectLookup = Callable[[http1.Head], DirectHandler | None]

KEEP_ALIVE_S = 75.0
HEAD_TIMEOUT_S = 10.0
DIRECT_LIMIT = 64 * 1024  # transport buffer below which try_write writes at once
READ_PAUSE_BYTES = 256 * 1024
MAX_PIPELINED_EVENTS = 64  # parsed events waiting behind the current answer before reading pauses
LINGER_S = 2.0  # how long a refused request's remaining bytes are read and dropped  # request bytes buffered beyond this pause reading
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()


class ServerState:
    """What every connection of one server shares."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keep_alive_s: float = KEEP_ALIVE_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        max_head_bytes: int = http1.MAX_HEAD_BYTES,
        tls: bool = False,
        direct: DirectLookup | None = None,
    ) -> None:
        self.app = app
        self.direct = direct
        self.direct_taken = 0  # requests answered by a direct handler (tests, debugging)
        self.keep_alive_s = keep_alive_s
        self.head_timeout_s = head_timeout_s
        self.max_head_bytes = max_head_bytes
        self.tls = tls
        self.connections: set[Connection] = set()
        self.draining = False
        self.emptied = asyncio.Event()  # set when draining and the last connection is gone


def problem_bytes(status: int, kind: str, detail: str, path: str | None = None) -> bytes:
    """A complete ``Connection: close`` problem+json response (the server's own refusals)."""
    body = Problem(status, kind, detail).body(path)
    return (
        _status_line(status)
        + b"content-type: "
        + PROBLEM_TYPE.encode()
        + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        + body
    )


class Connection(asyncio.Protocol):
    __slots__ = (
        "_drained",
        "client",
        "closed",
        "exchange",
        "idle_deadline",
        "lingering",
        "loop",
        "parser",
        "paused_reading",
        "paused_writing",
        "pending",
        "server",
        "state",
        "timer",
        "timer_kind",
        "transport",
        "websocket",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = http1.RequestParser(state.max_head_bytes)
        # Events of requests not yet being answered (a list: a deque costs ~600 bytes, and an
        # open event stream keeps its connection for hours; see bench/sse_fanout.py).
        self.pending: list[http1.Event] = []
        self.exchange: Exchange | DirectExchange | None = None
        self.websocket: WebSocketSession | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind: str | None = None
        self.closed = False
        self.lingering = False
        self.paused_reading = False
        self.paused_writing = False
        self._drained: asyncio.Future[None] | None = None  # only while a writer waits

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self.transport = transport  # type: ignore[assignment]
        self.state.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.idle_deadline = 0.0
        self._idle()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a refused request: read and dropped until we close
        if self.websocket is not None:
            self.websocket.data_received(data)
            return
        events = self.parser.feed(data)
        if self.exchange is None and self.parser.mid_head and self.timer_kind != "head":
            self._arm(self.state.head_timeout_s, self._head_timeout, "head")
        if events:
            self.pending.extend(events)
            self._advance()
        exchange = self.exchange
        if exchange is not None and (
            exchange.buffered > READ_PAUSE_BYTES or len(self.pending) > MAX_PIPELINED_EVENTS
        ):
            # A body the app has not read yet, or requests pipelined behind a long answer (an
            # event stream): stop reading until the app catches up, instead of holding it all.
            self._pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        state = self.state
        state.connections.discard(self)
        if state.draining and not state.connections:
            state.emptied.set()
        self._disarm()
        if self.exchange is not None:
            self.exchange.lost()
        if self.websocket is not None:
            self.websocket.lost()
        self._wake_writers()  # their sends become no-ops

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        drained = self._drained
        if drained is not None:
            self._drained = None
            if not drained.done():
                drained.set_result(None)

    async def drained(self) -> None:
        """Until the transport takes writes again (or the connection is gone)."""
        while self.paused_writing and not self.closed:
            if self._drained is None:
                self._drained = self.loop.create_future()
            await asyncio.shield(self._drained)

    # -- clocks ----------------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None], kind: str = "idle") -> None:
        self._disarm()
        self.timer = self.loop.call_later(delay, callback)
        self.timer_kind = kind

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_kind = None

    def _idle(self) -> None:
        """Idle from now: closed after keep_alive_s unless a request comes. The idle timer
        already running is kept and pushed back (it re-arms itself when it fires early)
        rather than cancelled and made again after every request."""
        self.idle_deadline = self.loop.time() + self.state.keep_alive_s
        if self.timer_kind != "idle":
            self._arm(self.state.keep_alive_s, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.timer = self.timer_kind = None
        if self.exchange is not None or self.parser.mid_head:
            return  # busy: the answer makes it idle again
        remaining = self.idle_deadline - self.loop.time()
        if remaining > 0.001:
            self._arm(remaining, self._idle_timeout)
            return
        self.close()

    def _head_timeout(self) -> None:
        self.timer = self.timer_kind = None
        if self.exchange is None:
            log.info("http.head_timeout", client=self.client)
            self.refuse(
                408,
                "request-timeout",
                f"the request head was not complete within {self.state.head_timeout_s:g} s",
            )

    # -- requests in order -----------------------------------------------------------------------

    def _advance(self) -> None:
        """Hand queued events to the exchange being answered, or start the next one."""
        pending = self.pending
        while pending and not self.closed:
            exchange = self.exchange
            if exchange is not None:
                if exchange.body_done:
                    return  # events of a later request wait for this answer
                assert isinstance(exchange, Exchange)  # a direct one has its whole body
                event = pending.pop(0)
                if isinstance(event, http1.Data):
                    exchange.body_received(event.data)
                elif isinstance(event, http1.End):
                    exchange.body_received(b"", done=True)
                else:  # a refusal in the middle of a body (bad chunk): answer it after
                    pending.insert(0, event)
                    exchange.body_broken()
                    return
                continue
            event = pending.pop(0)
            if isinstance(event, http1.Head):
                if self.timer_kind == "head":
                    self._disarm()
                if self.state.draining:
                    self.close()
                    return
                # A direct answer comes within the producer's timeout: the idle timer stays
                # (it does nothing while a request runs) instead of being cancelled and made
                # again per request. An ASGI exchange may be an event stream open for hours:
                # its connection holds no timer meanwhile.
                if self.state.direct is not None and self._direct(event):
                    continue
                self._disarm()
                exchange = self.exchange = Exchange(self, event)
                exchange.start()
            elif isinstance(event, http1.Upgrade):
                self._disarm()
                self.websocket = WebSocketSession(self, event)
                self.websocket.start()
                return
            elif isinstance(event, http1.Refused):
                log.info(
                    "http.refused", status=event.status, reason=event.detail, client=self.client
                )
                self.refuse(event.status, event.kind, event.detail)
                return

    def _direct(self, head: http1.Head) -> bool:
        """Answer ``head`` through a direct handler when its whole body is here already and
        the path's entry has one (see bridge/web/direct.py); False leaves it to ASGI."""
        if head.method in ("GET", "HEAD") or head.expect_continue:
            return False
        pending = self.pending
        end = next((i for i, e in enumerate(pending) if not isinstance(e, http1.Data)), -1)
        if end < 0 or not isinstance(pending[end], http1.End):
            return False  # the body is still coming (or broke): the ASGI exchange reads it
        assert self.state.direct is not None
        handler = self.state.direct(head)
        if handler is None:
            return False
        chunks = [e.data for e in pending[:end] if isinstance(e, http1.Data)]
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        exchange = DirectExchange(self, head)
        self.exchange = exchange
        try:
            taken = handler(DirectRequest(head, body, self.client, self.state.tls), exchange)
        except Exception:
            # A handler's bug answers its own request 500; it never breaks the connection's
            # other requests or the server.
            log.exception("http.direct_failed", path=head.path)
            problem = Problem(500, "internal-error", "the server failed to answer")
            exchange.respond(500, [("content-type", PROBLEM_TYPE)], problem.body(head.path))
            taken = True
        if not taken:
            self.exchange = None
            return False
        del pending[: end + 1]
        self.state.direct_taken += 1
        exchange.taken()
        return True

    def exchange_done(self, exchange: Exchange | DirectExchange, keep_alive: bool) -> None:
        """The response is complete: go on with the next pipelined request, or close."""
        if self.exchange is not exchange:
            return
        self.exchange = None
        if self.closed:
            return
        if not keep_alive or self.state.draining or (self.parser.finished and not self.pending):
            self.close(linger=not exchange.body_done)
            return
        if self.paused_reading:
            self.paused_reading = False
            with contextlib.suppress(Exception):
                self.transport.resume_reading()  # type: ignore[union-attr]
        if self.pending:
            self._advance()
        if self.exchange is None and not self.closed:
            if self.parser.mid_head:
                self._arm(self.state.head_timeout_s, self._head_timeout, "head")
            else:
                self._idle()

    def _pause_reading(self) -> None:
        if not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()

    def resume_if_drained(self) -> None:
        if self.paused_reading and self.exchange is not None and self.exchange.buffered == 0:
            self.paused_reading = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def refuse(self, status: int, kind: str, detail: str) -> None:
        """Answer a request the server itself refuses, and close only this connection."""
        self.write(problem_bytes(status, kind, detail))
        self.close(linger=True)

    def close(self, linger: bool = False) -> None:
        """Close; with ``linger``, first stop writing and drop what the client still sends for
        a moment (nginx's lingering close): closing a socket with unread bytes resets it, and a
        reset can destroy the answer (a 413) before the client has read it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if linger and not self.lingering and transport.can_write_eof():
            self.lingering = True
            self._disarm()
            if self.paused_reading:
                self.paused_reading = False
                transport.resume_reading()
            transport.write_eof()
            self.timer = self.loop.call_later(LINGER_S, transport.close)
            return
        transport.close()

    def drain_idle(self) -> None:
        """Draining: an idle keep-alive connection closes now; a busy one after its answer."""
        if self.exchange is None and self.websocket is None:
            self.close()


class DirectExchange:
    """A request a direct handler took: its whole body was read; one response, in one write."""

    __slots__ = ("answered", "connection", "disconnected", "keep_alive", "ready")

    body_done = True  # taken only with the whole body
    buffered = 0

    def __init__(self, connection: Connection, head: http1.Head) -> None:
        self.connection = connection
        self.keep_alive = head.keep_alive
        self.disconnected = False
        self.ready = False  # the server has taken the request's events off its queue
        self.answered: bool | None = None  # the keep-alive decision, once answered

    def respond(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        if self.answered is not None:
            return
        connection = self.connection
        keep_alive = self.keep_alive and not connection.state.draining
        if not self.disconnected:
            lines = [_status_line(status)]
            for name, value in headers:
                if name == "connection" and value.lower() == "close":
                    keep_alive = False
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
            if not keep_alive and not any(name == "connection" for name, _ in headers):
                lines.append(b"connection: close\r\n")
            lines.append(b"content-length: %d\r\n\r\n" % len(body))
            lines.append(body)
            connection.write(b"".join(lines))
        self.answered = keep_alive
        if self.ready:
            connection.exchange_done(self, keep_alive)

    def taken(self) -> None:
        """The server took the request's events: answer now if the handler already did (the
        next pipelined request must not start before its events were taken off the queue)."""
        self.ready = True
        if self.answered is not None:
            self.connection.exchange_done(self, self.answered)

    def lost(self) -> None:
        self.disconnected = True  # the answer, when it comes, is dropped


class Exchange:
    """One HTTP request and its response (an ASGI ``http`` scope)."""

    __slots__ = (
        "body",
        "body_done",
        "broken",
        "buffered",
        "chunked",
        "complete",
        "connection",
        "continue_sent",
        "disconnected",
        "end_given",
        "head",
        "keep_alive",
        "on_lost",
        "response_started",
        "scope",
        "scope_head",
        "task",
        "waiter",
    )

    def __init__(self, connection: Connection, head: http1.Head) -> None:
        self.connection = connection
        self.head = head
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_done = not head.has_body
        self.broken = False
        self.continue_sent = not head.expect_continue
        self.disconnected = False
        self.end_given = False
        self.response_started = False
        self.scope_head: Message | None = None  # the response head, written with the first body
        self.complete = False  # the response is complete
        self.chunked = False
        self.keep_alive = head.keep_alive
        self.waiter: asyncio.Future[None] | None = None
        # Called when the client leaves: an app that only writes (an event stream) need not
        # keep a task waiting in receive() for http.disconnect.
        self.on_lost: Callable[[], object] | None = None
        self.task: asyncio.Task[None] | None = None
        self.scope: Scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": head.http_version,
            "method": head.method,
            "scheme": "https" if connection.state.tls else "http",
            "path": head.path,
            "raw_path": head.raw_path,
            "query_string": head.query_string,
            "root_path": "",
            "headers": head.headers,
            "client": connection.client,
            "server": connection.server,
            "state": {},
            "extensions": {},
        }

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await self.connection.state.app(self.scope, self.receive, self.send)
        except Exception:
            log.exception("http.app_failed", path=self.head.path)
            if not self.response_started and not self.disconnected:
                body = Problem(500, "internal-error", "the server failed to answer").body()
                await self.send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", PROBLEM_TYPE.encode())],
                    }
                )
                await self.send({"type": "http.response.body", "body": body})
            else:
                self.keep_alive = False
        finally:
            if not self.complete:
                # The app returned without finishing its response: the framing is unknowable.
                self.keep_alive = False
                self.complete = True
                if self.response_started and self.chunked and not self.disconnected:
                    self.connection.write(b"0\r\n\r\n")
            self.connection.exchange_done(self, self.keep_alive and self.body_done)

    # -- request body ----------------------------------------------------------------------------

    def body_received(self, data: bytes, done: bool = False) -> None:
        if data:
            self.body.append(data)
            self.buffered += len(data)
        if done:
            self.body_done = True
        self._wake()

    def body_broken(self) -> None:
        """The request's framing broke mid-body (llhttp refused a chunk): the app sees the
        client leave; the refusal is answered (and the connection closed) after it."""
        self.broken = True
        self.keep_alive = False
        self._wake()

    def lost(self) -> None:
        self.disconnected = True
        self._wake()
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:
                log.exception("http.on_lost_failed", path=self.head.path)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Message:
        while True:
            if self.disconnected or self.broken:
                return {"type": "http.disconnect"}
            if self.body:
                body = self.body
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self.buffered = 0
                self.connection.resume_if_drained()
                if self.body_done:
                    self.end_given = True
                return {"type": "http.request", "body": data, "more_body": not self.body_done}
            if self.body_done and not self.end_given:
                self.end_given = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if not self.body_done and not self.continue_sent:
                # The app wants the body: now invite it (RFC 9110 10.1.1).
                self.continue_sent = True
                self.connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self.complete and self.body_done:
                return {"type": "http.disconnect"}
            self.waiter = self.connection.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    # -- response --------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self.complete:
                raise RuntimeError("the response is already complete")
            if not self.response_started:
                raise RuntimeError("http.response.body before http.response.start")
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            connection = self.connection
            if self.scope_head is not None:
                connection.write(self._head_bytes(self.scope_head, body, more))
                self.scope_head = None
            if self.head.method == "HEAD":
                pass
            elif self.chunked:
                if body:
                    connection.write(b"%x\r\n%b\r\n" % (len(body), body))
                if not more:
                    connection.write(b"0\r\n\r\n")
            elif body:
                connection.write(body)
            if not more:
                self.complete = True
                self._wake()
            if connection.paused_writing and not self.disconnected:
                await connection.drained()
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self.response_started = True
            self.scope_head = message
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an http scope")

    def _head_bytes(self, start: Message, body: bytes, more: bool) -> bytes:
        status = int(start["status"])
        lines = [_status_line(status)]
        has_length = False
        close = False
        for name, value in start.get("headers", ()):
            lowered = name.lower()
            if lowered == b"content-length":
                has_length = True
            elif lowered == b"connection" and value.lower() == b"close":
                close = True
            elif lowered == b"transfer-encoding":
                continue  # framing is ours to decide
            lines.append(b"%b: %b\r\n" % (name, value))
        bodiless = status < 200 or status in (204, 304)
        if not has_length and not bodiless:
            if not more:
                lines.append(b"content-length: %d\r\n" % len(body))
            elif self.head.http_version == "1.1":
                self.chunked = self.head.method != "HEAD"
                if self.chunked:
                    lines.append(b"transfer-encoding: chunked\r\n")
            else:
                close = True  # HTTP/1.0: the body ends with the connection
        if not self.body_done:
            # Answered before the request body was read: those bytes cannot be told apart from
            # a next request, so this connection ends with the response.
            close = True
        if close or not self.keep_alive or self.connection.state.draining:
            self.keep_alive = False
            if not any(k.lower() == b"connection" for k, _ in start.get("headers", ())):
                lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def try_write(self, data: bytes) -> bool:
        """Write ``data`` as one body chunk now if nothing is queued before it and the socket has
        room; False means "use ``send``" (which waits for room). The event-stream hot path."""
        transport = self.connection.transport
        if (
            not self.chunked
            or self.scope_head is not None
            or self.complete
            or self.disconnected
            or transport is None
            or transport.is_closing()
            or self.connection.paused_writing
            or transport.get_write_buffer_size() > DIRECT_LIMIT
        ):
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True


class WebSocketSession:
    """One upgraded connection: wsproto frames <-> ASGI ``websocket`` messages."""

    def __init__(self, connection: Connection, upgrade: http1.Upgrade) -> None:
        self.connection = connection
        self.upgrade = upgrade
        self.ws = WSConnection(ConnectionType.SERVER)
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.accepted = False
        self.closed = False  # nothing more may be sent (our close frame went, or the peer left)
        self.disconnected = False  # the app was told (websocket.disconnect)
        self.close_timer: asyncio.TimerHandle | None = None
        self.text: list[str] = []
        self.data: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        head = upgrade.head
        self.scope: Scope = {
            "type": "websocket",
            "asgi": ASGI_VERSION,
            "http_version": head.http_version,
            "scheme": "wss" if connection.state.tls else "ws",
            "path": head.path,
            "raw_path": head.raw_path,
            "query_string": head.query_string,
            "root_path": "",
            "headers": head.headers,
            "client": connection.client,
            "server": connection.server,
            "subprotocols": [],
            "state": {},
            "extensions": {},
        }

    def start(self) -> None:
        try:
            self.ws.receive_data(self.upgrade.raw_head)
            request = next((e for e in self.ws.events() if isinstance(e, ws.Request)), None)
        except Exception as exc:  # wsproto refuses a bad handshake (a missing key, version)
            request = None
            log.info("websocket.bad_handshake", error=str(exc))
        if request is None:
            self.connection.refuse(
                400, "bad-websocket-handshake", "not a valid WebSocket handshake"
            )
            return
        self.scope["subprotocols"] = list(request.subprotocols)
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.ensure_future(self._run())
        if self.upgrade.rest:
            self.data_received(self.upgrade.rest)

    async def _run(self) -> None:
        try:
            await self.connection.state.app(self.scope, self.receive, self.send)
        except Exception:
            log.exception("websocket.app_failed", path=self.scope["path"])
        finally:
            if not self.closed:
                with contextlib.suppress(Exception):
                    await self.send({"type": "websocket.close", "code": 1011})
            if self.disconnected:
                self.connection.close()
            # else: our close frame is out; the socket closes on the client's close frame or
            # after LINGER_S (the timer set when the close frame was sent)

    def data_received(self, data: bytes) -> None:
        try:
            self.ws.receive_data(data)
            events = list(self.ws.events())
        except Exception:
            self.lost(1002)
            self.connection.close()
            return
        for event in events:
            if isinstance(event, ws.TextMessage):
                self.text.append(event.data)
                if event.message_finished:
                    self.inbox.put_nowait({"type": "websocket.receive", "text": "".join(self.text)})
                    self.text = []
            elif isinstance(event, ws.BytesMessage):
                self.data.append(bytes(event.data))
                if event.message_finished:
                    self.inbox.put_nowait(
                        {"type": "websocket.receive", "bytes": b"".join(self.data)}
                    )
                    self.data = []
            elif isinstance(event, ws.Ping):
                self.connection.write(self.ws.send(event.response()))
            elif isinstance(event, ws.CloseConnection):
                if not self.closed:
                    with contextlib.suppress(Exception):
                        self.connection.write(self.ws.send(event.response()))
                self.lost(event.code)
                self._end()

    def lost(self, code: int = 1006) -> None:
        self.closed = True
        if not self.disconnected:
            self.disconnected = True
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})

    def _end(self) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.connection.close()

    def _close_timeout(self) -> None:
        """The client never answered our close frame: the app is told, the socket goes."""
        self.close_timer = None
        self.lost(1006)
        self.connection.close()

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        connection = self.connection
        if self.closed or connection.closed:
            return
        if kind == "websocket.accept":
            headers = [(k, v) for k, v in message.get("headers", ())]
            connection.write(
                self.ws.send(
                    ws.AcceptConnection(
                        subprotocol=message.get("subprotocol"), extra_headers=headers
                    )
                )
            )
            self.accepted = True
        elif kind == "websocket.send":
            if message.get("bytes") is not None:
                connection.write(self.ws.send(ws.Message(data=message["bytes"])))
            else:
                connection.write(self.ws.send(ws.Message(data=message.get("text") or "")))
        elif kind == "websocket.close":
            if self.accepted:
                connection.write(
                    self.ws.send(
                        ws.CloseConnection(
                            code=message.get("code", 1000), reason=message.get("reason")
                        )
                    )
                )
            else:
                # Refused before the handshake completed: an HTTP 403, as the ASGI spec says.
                connection.write(self.ws.send(ws.RejectConnection(status_code=403, has_body=False)))
            self.closed = True
            if not self.accepted:
                self.lost(message.get("code", 1000))
                connection.close(linger=True)
                return
            # RFC 6455 7.1.1: the server waits for the client's close frame before closing the
            # socket, reading (and handing the app) what still comes. A client still sending
            # when we close (an MQTT DISCONNECT with its reason, then this frame) so reads both
            # instead of a reset. The app hears websocket.disconnect when the client's close
            # frame comes, or after LINGER_S without one.
            self.close_timer = connection.loop.call_later(LINGER_S, self._close_timeout)
            return
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a websocket scope")
        if connection.paused_writing:
            await connection.drained()


class LeanServer:
    """The asyncio servers of one listener (its sockets), sharing one :class:`ServerState`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keep_alive_s: float = KEEP_ALIVE_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        max_head_bytes: int = http1.MAX_HEAD_BYTES,
        direct: DirectLookup | None = None,
    ) -> None:
        self.state = ServerState(
            app,
            keep_alive_s=keep_alive_s,
            head_timeout_s=head_timeout_s,
            max_head_bytes=max_head_bytes,
            tls=ssl_context is not None,
            direct=direct,
        )
        self.ssl_context = ssl_context
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, sockets: list[Any], backlog: int) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(
                lambda: Connection(self.state), sock=sock, ssl=self.ssl_context, backlog=backlog
            )
            self.servers.append(server)

    @property
    def serving(self) -> bool:
        return bool(self.servers) and not self.state.draining

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, let open exchanges finish for up to
        ``timeout_s``, then cut what is left."""
        state = self.state
        state.draining = True
        for server in self.servers:
            server.close()
        for connection in list(state.connections):
            connection.drain_idle()
        if state.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.emptied.wait(), timeout_s)
        for connection in list(state.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for connection in list(state.connections):
            connection.connection_lost(None)
