"""HTTP/1.1 requests from bytes, sans-io: bytes in, events out (no sockets, no clock).

The parsing itself is httptools (llhttp, the parser uvicorn and Node.js use); this module adds
what a server must decide on top of it, once, so :mod:`bridge.web.server` only moves bytes:

* a request head larger than ``max_head_bytes`` is refused with 431;
* request smuggling: ``Content-Length`` together with ``Transfer-Encoding``, two
  ``Content-Length`` headers, or a ``Transfer-Encoding`` that does not end in ``chunked`` are
  refused with 400 (a proxy in front and this server must never disagree on where a body ends);
* a malformed request (llhttp's verdict) is refused with 400;
* pipelined requests come out in order, one :class:`Head` ... :class:`End` run per request;
* an ``Upgrade: websocket`` request ends parsing: :class:`Upgrade` carries the raw head (for the
  WebSocket handshake) and the bytes after it.

After an :class:`Refused` event the connection must answer it and close: nothing more is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

import httptools

MAX_HEAD_BYTES = 16 * 1024  # larger heads are 431 (h11's default limit is the same)


@dataclass(slots=True)
class Head:
    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]  # names lower-cased, order kept
    keep_alive: bool
    expect_continue: bool
    has_body: bool  # a Content-Length above 0 or a chunked body follows


@dataclass(slots=True)
class Data:
    data: bytes


@dataclass(slots=True)
class End:
    pass


@dataclass(slots=True)
class Upgrade:
    head: Head
    raw_head: bytes
    rest: bytes


@dataclass(slots=True)
class Refused:
    status: int  # 400 or 431
    kind: str
    detail: str


Event = Head | Data | End | Upgrade | Refused


@dataclass(slots=True)
class _Message:
    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class RequestParser:
    """Feed bytes with :meth:`feed`; it returns the events they complete, in order."""

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self.max_head_bytes = max_head_bytes
        # None between requests: httptools' parser is ~900 bytes, and an event stream's
        # connection sits between requests for hours (a new one costs ~0.2 us when bytes come).
        self._parser: httptools.HttpRequestParser | None = None
        self._between = True  # the last message is complete and no next one has begun
        self._events: list[Event] = []
        self._message: _Message | None = None
        self._in_head = False
        self._head_bytes = 0  # bytes of the current head seen so far (431)
        self._raw_head = bytearray()  # kept only while a head is incomplete (WebSocket handshake)
        self._refused = False
        self._upgrade_head: Head | None = None

    @property
    def finished(self) -> bool:
        """No more requests will come from this connection (refused or upgraded)."""
        return self._refused

    @property
    def mid_head(self) -> bool:
        """Some bytes of a request head arrived but not all of it (the slowloris timer runs)."""
        return self._in_head

    def feed(self, data: bytes) -> list[Event]:
        if self._refused:
            return []
        events = self._events = []
        if self._parser is None:
            self._parser = httptools.HttpRequestParser(self)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._refused:
                return events
            offset = upgrade.args[0] if upgrade.args else len(data)
            head = self._upgrade_head
            if head is None:
                # An upgrade to something else (h2c): the request was answered as HTTP/1.1;
                # the connection ends after it (the bytes after it are not HTTP/1.1).
                self._refused = True
                return events
            raw = bytes(self._raw_head) + data[:offset] if self._raw_head else data[:offset]
            events.append(Upgrade(head, raw, data[offset:]))
            self._refused = True  # no more HTTP on this connection
        except httptools.HttpParserError as exc:
            if not self._refused:
                detail = str(exc) or "malformed HTTP/1.1 request"
                self._refuse(400, "bad-request", f"malformed request: {detail}")
        if self._in_head and not self._refused:
            self._head_bytes += len(data)
            self._raw_head += data
            if self._head_bytes > self.max_head_bytes:
                self._refuse(
                    431,
                    "head-too-large",
                    f"the request head exceeds {self.max_head_bytes} bytes",
                )
        elif self._raw_head:
            self._raw_head = bytearray()  # the head is complete: nothing to keep
        if self._between:
            self._parser = None
        return events

    def _refuse(self, status: int, kind: str, detail: str) -> list[Event]:
        self._refused = True
        self._events.append(Refused(status, kind, detail))
        return self._events

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._between = False
        self._message = _Message()
        self._in_head = True
        self._head_bytes = 0
        self._raw_head = bytearray()

    def on_url(self, url: bytes) -> None:
        assert self._message is not None
        self._message.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._message is not None
        self._message.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        message = self._message
        assert message is not None
        self._in_head = False
        self._message = None  # held by the Head from here: an event stream lives for hours
        if self._refused:
            return
        # One pass over the headers (this runs for every request): the head's size, and the
        # headers that frame the body or ask for something.
        size = len(message.url)
        lengths: list[bytes] = []
        codings: list[bytes] = []
        expect = False
        for name, value in message.headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name == b"expect":
                expect = expect or value.strip().lower() == b"100-continue"
        if size > self.max_head_bytes:
            self._refuse(
                431, "head-too-large", f"the request head exceeds {self.max_head_bytes} bytes"
            )
            return
        if len(lengths) > 1:
            self._refuse(400, "bad-framing", "more than one Content-Length header")
            return
        if lengths and codings:
            self._refuse(
                400,
                "bad-framing",
                "both Content-Length and Transfer-Encoding: the body is ambiguous",
            )
            return
        if codings:
            last = b",".join(codings).split(b",")[-1].strip().lower()
            if last != b"chunked":
                self._refuse(
                    400, "bad-framing", "Transfer-Encoding must end in chunked on a request"
                )
                return
        if lengths and not lengths[0].strip().isdigit():
            self._refuse(400, "bad-content-length", "Content-Length is not a number")
            return
        parser = self._parser
        assert parser is not None  # called by it
        url = httptools.parse_url(message.url)
        raw_path = url.path or b"/"
        version = parser.get_http_version()
        has_body = bool(codings) or (bool(lengths) and int(lengths[0]) > 0)
        head = Head(
            method=parser.get_method().decode("ascii"),
            path=unquote(raw_path.decode("latin-1")),
            raw_path=raw_path,
            query_string=url.query or b"",
            http_version=version,
            headers=message.headers,
            keep_alive=parser.should_keep_alive(),
            expect_continue=expect and version == "1.1",
            has_body=has_body,
        )
        if parser.should_upgrade():
            upgrade = next((v for k, v in message.headers if k == b"upgrade"), b"")
            if upgrade.strip().lower() == b"websocket":
                self._upgrade_head = head
                return
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._between = True
        if not self._refused and self._upgrade_head is None:
            self._events.append(End())
