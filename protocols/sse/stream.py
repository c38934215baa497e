"""One client's event stream: a bounded buffer filled by the hub and a pump that drains it.

The hub calls :meth:`EventStream.deliver` synchronously for every record; it only appends the
channel's already-encoded bytes to a list (no per-client encoding, no per-client task wake-up
beyond resolving one future). The pump, running in the client's own ASGI task, writes whatever
has accumulated as *one* body chunk: under load many events leave in one write, which is where
most of the framework's per-write cost is saved.

Per-client state is this object (slots only), its buffer and the server's connection objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.hub import Subscription
from bridge.message import Message
from bridge.position import Position
from protocols.sse import encoder
from protocols.sse.channel import Channel

Send = Callable[[dict[str, Any]], Awaitable[None]]


class CloseReason:
    CLIENT_GONE = "client_gone"
    SLOW = "slow_client"
    EXPIRED = "token_expired"
    DROPPED = "dropped"  # the server ended it (shutdown, tests); the client resumes by id


class EventStream:
    __slots__ = (
        "_waiter",
        "channel",
        "chunks",
        "closed",
        "expires_at",
        "heartbeat_ticks",
        "idle_ticks",
        "limit",
        "reason",
        "sending",
        "size",
        "subscription",
        "task",
    )

    def __init__(self, channel: Channel, expires_at: float | None, heartbeat_ticks: int) -> None:
        self.channel = channel
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = channel.options.max_buffer_bytes
        self.closed = False
        self.reason: str | None = None
        self.subscription: Subscription | None = None
        self.expires_at = expires_at
        self.heartbeat_ticks = heartbeat_ticks  # 0: never
        self.idle_ticks = 0
        self.sending = False
        self.task: asyncio.Task[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- filled by the hub (synchronous, never blocks) -----------------------------------------

    def deliver(self, record: Message, position: Position) -> None:
        if self.closed:
            return
        data = self.channel.encode(record, position)
        if data is not None:
            self.push(data)

    def push(self, data: bytes) -> None:
        self.size += len(data)
        # Only a client whose socket is full (the pump is stuck in a write) can overflow: a burst
        # handed over in one synchronous pass (a fetch batch, a replay from the cache) goes out
        # on the pump's next turn, so it must not count against a client that keeps up.
        if self.size > self.limit and self.sending:
            self.close(CloseReason.SLOW)
            return
        self.chunks.append(data)
        self.idle_ticks = 0
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        """Stop the stream. Buffered events still go out unless the client is gone or too slow."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if reason in (CloseReason.SLOW, CloseReason.CLIENT_GONE):
            self.chunks = []
            self.size = 0
            if self.sending and reason == CloseReason.SLOW and self.task is not None:
                # The pump is stuck in a write the client does not read: interrupt it.
                self.task.cancel()
        if self.subscription is not None:
            self.subscription.close()
        self._wake()

    # -- drained by the client's task ----------------------------------------------------------

    async def pump(self, send: Send) -> None:
        """Write buffered events until the stream is closed."""
        loop = asyncio.get_running_loop()
        while True:
            chunks = self.chunks
            if chunks:
                self.chunks = []
                self.size = 0
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self.sending = True
                await send({"type": "http.response.body", "body": body, "more_body": True})
                self.sending = False
                continue
            if self.closed:
                return
            self._waiter = loop.create_future()
            await self._waiter
            self._waiter = None

    # -- the frontend's ticker ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Once per tick: close on token expiry, else a heartbeat comment if the stream is quiet."""
        if self.closed:
            return
        if self.expires_at is not None and now >= self.expires_at:
            self.push(encoder.event("token expired", "error"))
            self.close(CloseReason.EXPIRED)
            return
        if self.heartbeat_ticks:
            self.idle_ticks += 1
            if self.idle_ticks >= self.heartbeat_ticks:
                self.push(encoder.HEARTBEAT)
