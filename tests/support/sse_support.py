"""Helpers for SSE tests: an independent event-stream parser (written from the WHATWG rules, not
from the bridge's encoder) and small producers/readers over real sockets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from bridge.message import Message


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


def base_url(bridge: object) -> str:
    return f"http://127.0.0.1:{bridge.web.port}"  # type: ignore[attr-defined]


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

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"{url}: {len(events)} of {count} events in {timeout} s: {events}"
        ) from None
    return events, parser
