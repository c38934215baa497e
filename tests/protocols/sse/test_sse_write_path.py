"""How an event leaves: written through to the socket inside the hub's pass, coalesced after.

One :class:`EventStream` on the lean listener's real connection class over a real loopback
socket, driven the way the hub drives it (``deliver`` called synchronously), read by a plain
socket client. No broker is needed: the hub's side of this is only the synchronous calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sse_support import EventParser, until

from bridge.model.config import parse_config
from bridge.model.message import Message
from bridge.model.position import Position
from protocols.sse.channel import Channel
from protocols.sse.lean import LeanConnection
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
    """A stream on a server-side LeanConnection, and the client socket that reads it."""

    def __init__(self) -> None:
        route = parse_config(ROUTE, Path("routing.toml"), {}).routes[0]
        assert route.sse is not None
        self.channel = Channel(route, {}, SseOptions.of(route.sse))
        self.flusher = Flusher()
        self.connection: LeanConnection | None = None
        self.stream = EventStream(self.channel, None, 0, self.flusher)
        self.parser = EventParser()
        self.received: list[str] = []
        self.offset = 0

    async def start(self) -> AsyncIterator[Pair]:
        loop = asyncio.get_running_loop()

        def accept() -> LeanConnection:
            self.connection = LeanConnection(None)  # type: ignore[arg-type]  # no head is read
            return self.connection

        server = await loop.create_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: self.connection is not None, what="accepted")
        assert self.connection is not None
        self.connection._head_read()  # (its head timer is for real requests)
        self.stream.chunks = [b"retry: 100\n\n"]
        pump = asyncio.create_task(self.stream.pump(self.connection.send))
        await until(lambda: self.stream._parked_idle(), what="pump parked")
        try:
            yield self
        finally:
            pump.cancel()
            writer.close()
            server.close()

    def deliver(self, value: str) -> None:
        """What the hub does for one record: a new record and position, handed over."""
        record = Message("odds", None, value.encode(), (), None, 0, self.offset)
        self.offset += 1
        self.stream.deliver(record, Position({0: self.offset}))

    async def read(self, count: int) -> list[str]:
        while len(self.received) < count:
            chunk = await asyncio.wait_for(self.reader.read(65536), 10)
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
