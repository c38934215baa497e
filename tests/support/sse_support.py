"""Helpers for SSE tests: an independent event-stream parser (written from the WHATWG rules, not
from the bridge's encoder) and small producers/readers over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bridge.model.message import Message


@dataclass
class Event:
    data: str
    event: str
    id: str  # the last event id in force when this event was dispatched


@dataclass
class EventParser:
    """Feed bytes, get dispatched events; ``last_id`` follows id-only events too, as a browser."""

    last_id: str = ""
    retry_ms: int | None = None
    comments: int = 0
    _buffer: str = ""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _id: str | None = None

    def connection_lost(self) -> None:
        """What a browser forgets when a stream ends: the half-received event (not the id)."""
        self._buffer, self._data, self._event, self._id = "", [], "", None

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk.decode("utf-8")
        out: list[Event] = []
        while True:
            cut = min(
                (i for i in (self._buffer.find("\r"), self._buffer.find("\n")) if i >= 0),
                default=-1,
            )
            if cut < 0:
                return out
            line = self._buffer[:cut]
            width = 2 if self._buffer[cut : cut + 2] == "\r\n" else 1
            self._buffer = self._buffer[cut + width :]
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> Event | None:
        if line == "":
            if self._id is not None:
                self.last_id = self._id
                self._id = None
            data, name = self._data, self._event
            self._data, self._event = [], ""
            if not data:
                return None
            return Event("\n".join(data), name or "message", self.last_id)
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


async def produce(
    bridge: object,
    topic: str,
    values: list[str | None],
    key: str | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> None:
    producer, _ = bridge.kafka  # type: ignore[attr-defined]
    for value in values:
        await producer.send(
            Message(
                topic,
                key.encode() if key is not None else None,
                value.encode() if value is not None else None,
                headers,
            )
        )


def stream_port(bridge: object) -> int:
    """The port a test reads streams from: the one HTTP listener's."""
    return bridge.web.port  # type: ignore[attr-defined, no-any-return]


def base_url(bridge: object) -> str:
    return f"http://127.0.0.1:{stream_port(bridge)}"


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    count: int,
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> tuple[list[Event], EventParser]:
    """Open ``url`` and read until ``count`` events arrived; then close the stream."""
    parser = EventParser()
    events: list[Event] = []

    async def run() -> None:
        async with client.stream(
            "GET", url, headers={"Accept": "text/event-stream", **(headers or {})}
        ) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            async for chunk in response.aiter_raw():
                events.extend(parser.feed(chunk))
                if len(events) >= count:
                    return
            raise AssertionError(f"{url}: the stream ended after {len(events)} of {count} events")

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"{url}: {len(events)} of {count} events in {timeout} s: {events}"
        ) from None
    return events, parser


# One SSE route at /odds (event "odds") over ``{topic}``: what EventStream reads.
ODDS_ROUTE = """
[[routes]]
name = "odds"
topic = "{topic}"

[routes.sse]
path = "/odds"
event = "odds"
"""


class EventStream:
    """An SSE GET of ``/odds`` read event by event: ``async with EventStream(client) as s``
    returns once the stream announced its starting position."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        headers: dict[str, str] | None = None,
        path: str = "/odds",
    ) -> None:
        self.path = path
        self.client, self.headers = client, {"Accept": "text/event-stream", **(headers or {})}
        self.parser = EventParser()
        self.events: list = []

    async def __aenter__(self) -> EventStream:
        request = self.client.build_request("GET", self.path, headers=self.headers)
        self.response = await self.client.send(request, stream=True)
        assert self.response.status_code == 200, await self.response.aread()
        self.chunks = self.response.aiter_raw()
        while not self.parser.last_id:  # subscribed once its starting position is announced
            self.events.extend(self.parser.feed(await asyncio.wait_for(anext(self.chunks), 10)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.response.aclose()

    async def until(self, count: int, timeout: float = 15) -> list:
        async def run() -> None:
            while len(self.events) < count:
                self.events.extend(self.parser.feed(await anext(self.chunks)))

        await asyncio.wait_for(run(), timeout)
        return self.events

    async def ended(self, timeout: float = 15) -> None:
        async def run() -> None:
            async for chunk in self.chunks:
                self.events.extend(self.parser.feed(chunk))

        await asyncio.wait_for(run(), timeout)


@dataclass
class ResumingReader:
    """A client that behaves like EventSource: on any end or failure of the stream it reconnects
    (to the next of ``urls``, so consecutive connections can land on different instances) with
    ``Last-Event-ID``, retrying while nothing listens."""

    urls: list[str]
    parser: EventParser = field(default_factory=EventParser)
    events: list[Event] = field(default_factory=list)
    connects: int = 0
    failures: int = 0

    async def read(self, count: int, timeout: float = 60) -> list[Event]:
        try:
            await asyncio.wait_for(self._run(count), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{len(self.events)} of {count} events after {self.connects} connections"
            ) from None
        return self.events

    async def _run(self, count: int) -> None:
        attempt = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            while len(self.events) < count:
                url = self.urls[attempt % len(self.urls)]
                attempt += 1
                headers = {"Accept": "text/event-stream"}
                if self.parser.last_id:
                    headers["Last-Event-ID"] = self.parser.last_id
                try:
                    async with client.stream("GET", url, headers=headers) as response:
                        assert response.status_code == 200, response.status_code
                        self.connects += 1
                        async for chunk in response.aiter_raw():
                            self.events.extend(self.parser.feed(chunk))
                            if len(self.events) >= count:
                                return
                except httpx.TransportError:
                    self.failures += 1
                    await asyncio.sleep(0.05)
                self.parser.connection_lost()


class KillingProxy:
    """A TCP proxy in front of a bridge that can cut every connection abruptly (RST), the way a
    stadium's mobile network does, and can be pointed at another upstream."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.kills = 0

    async def start(self) -> KillingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.kill_all()
        if self._server is not None:
            self._server.close()

    def kill_all(self) -> int:
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.transport.abort()
        self.kills += len(writers) // 2
        return len(writers) // 2

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await self._relay(reader, writer, up_reader, up_writer)

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Carry bytes both ways (a subclass may read and rewrite them)."""
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    dropping: Callable[[], bool] = lambda: False,
) -> None:
    """Carry bytes from ``reader`` to ``writer``; while ``dropping()``, read and drop them."""
    try:
        while data := await reader.read(65536):
            if dropping():
                continue
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


async def until(condition: Callable[[], bool], timeout: float = 10, what: str = "state") -> None:
    """Poll ``condition`` (state in another task or process that has no event to wait on)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.01)
