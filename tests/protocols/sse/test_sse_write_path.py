"""How an event leaves: written through to the socket inside the hub's pass, coalesced after.

One :class:`EventStream` served by the HTTP listener's own server (bridge/web/server.py) over a
real loopback socket, driven the way the hub drives it (``deliver`` called synchronously), read by
an httpx client. No broker is needed: the hub's side of this is only the synchronous calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sse_support import EventParser, until

from bridge.model.config import parse_config
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.web.server import Connection, LeanServer
from bridge.web.sockets import listening_socket
from protocols.sse.channel import Channel
from protocols.sse.options import SseOptions
from protocols.sse.stream import EventStream, Flusher

ROUTE = """
[[routes]]
name = "odds"
topic = "odds"

[routes.sse]
path = "/odds"
heartbeat_s = 0
"""


class Pair:
    """A stream served by the listener's own server, and an HTTP client that reads it."""

    def __init__(self) -> None:
        route = parse_config(ROUTE, Path("routing.toml"), {}).routes[0]
        assert route.sse is not None
        self.channel = Channel(route, {}, SseOptions.of(route.sse))
        self.flusher = Flusher()
        self.connection: Connection | None = None
        self.stream = EventStream(self.channel, None, 0, self.flusher)
        self.parser = EventParser()
        self.received: list[str] = []
        self.offset = 0

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.connection = send.__self__.connection  # the Exchange's connection
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        self.stream.chunks = [b"retry: 100\n\n"]
        await self.stream.pump(send)

    async def start(self) -> AsyncIterator[Pair]:
        server = LeanServer(self.app)
        sock = listening_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        await server.start([sock], 100)
        try:
            async with (
                httpx.AsyncClient() as client,
                client.stream("GET", f"http://127.0.0.1:{port}/odds") as response,
            ):
                self.chunks = response.aiter_raw()
                await until(lambda: self.stream._parked_idle(), what="pump parked")
                assert self.stream.writes_directly
                yield self
                self.stream.close("test over")
        finally:
            await server.drain(1)

    def deliver(self, value: str) -> None:
        """What the hub does for one record: a new record and position, handed over."""
        record = Message("odds", None, value.encode(), (), None, 0, self.offset)
        self.offset += 1
        self.stream.deliver(record, Position({0: self.offset}))

    async def read(self, count: int) -> list[str]:
        while len(self.received) < count:
            chunk = await asyncio.wait_for(anext(self.chunks), 10)
            assert chunk, "the stream ended"
            self.received += [event.data for event in self.parser.feed(chunk)]
        return self.received


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async for started in Pair().start():
        yield started


async def test_an_idle_stream_writes_the_event_inside_the_hubs_call(pair: Pair) -> None:
    pair.deliver("1")
    # Nothing buffered and nothing scheduled for this stream: the bytes went to the socket
    # before deliver returned (the last of N clients no longer waits for a second pass).
    assert pair.stream.chunks == []
    assert await pair.read(1) == ["1"]


async def test_later_events_of_the_same_loop_step_are_joined_into_one_write(
    pair: Pair,
) -> None:
    pair.deliver("1")
    pair.deliver("2")  # a fetch batch: same loop step
    pair.deliver("3")
    assert [len(c) > 0 for c in pair.stream.chunks] == [True, True]  # 2 and 3, waiting
    await asyncio.sleep(0)  # the step ends: the flusher writes what waited, in one write
    assert pair.stream.chunks == []
    pair.deliver("4")  # a new step: written through again
    assert pair.stream.chunks == []
    assert await pair.read(4) == ["1", "2", "3", "4"]


async def test_a_stream_whose_socket_is_full_buffers_instead(pair: Pair) -> None:
    assert pair.connection is not None
    pair.connection.pause_writing()  # what the transport says above its high-water mark
    pair.deliver("1")
    await asyncio.sleep(0)
    assert pair.stream.sending, "the pump waits for the socket, where slow clients are seen"
    pair.deliver("2")
    assert len(pair.stream.chunks) == 1
    pair.connection.resume_writing()
    assert await pair.read(2) == ["1", "2"]
    pair.deliver("3")
    assert await pair.read(3) == ["1", "2", "3"]
