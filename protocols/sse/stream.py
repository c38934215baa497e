"""One client's event stream: a bounded buffer filled by the hub, written out with few wake-ups.

The hub calls :meth:`EventStream.deliver` synchronously for every record with the channel's
already-encoded bytes. Writing then takes one of three paths:

* **write-through** (the common case at a steady rate): a stream that is idle (nothing
  buffered, its task parked, its socket with room) writes the event to its transport right
  there, inside the hub's pass, so the first client's bytes leave while the hub is still
  handing the record to the others: publish->receive for the last of N clients is one pass of
  N writes, not a pass of N hand-overs followed by a pass of N writes. Only the *first* event
  of a loop step goes through like this; later ones in the same step (a fetch batch, a replay)
  are buffered and joined, so coalescing under load is kept.
* **direct** (after a batch): the :class:`Flusher` writes every stream whose buffer filled
  during the step, in one pass after the hub's batch. Hypercorn's ``send`` coroutine is driven
  by hand and, when the socket has room, it finishes without ever suspending, so a delivery
  costs no task switch and no new future.
* **pump** (the client's own ASGI task): the first bytes, any write that must wait for the
  socket (the suspended ``send`` is handed to the task and finished there), and whatever
  accumulated meanwhile, joined into one body chunk: under load many events leave in one write.

Per-client state is this object (slots only), its buffer and the server's connection objects.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from bridge.kafka.hub import Subscription
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.web.server import Exchange
from protocols.sse import encoder
from protocols.sse.channel import Channel

Send = Callable[[dict[str, Any]], Awaitable[None]]
Parked = tuple[Coroutine[Any, Any, Any], Any]


class CloseReason:
    CLIENT_GONE = "client_gone"
    SLOW = "slow_client"
    EXPIRED = "token_expired"
    DROPPED = "dropped"  # the server ended it (shutdown, tests); the client resumes by id
    TOPIC_DELETED = "topic_deleted"  # its Kafka topic is gone (after an ``event: reset``)


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


class Flusher:
    """Writes every stream that became ready during one loop step, after the hub's dispatch.

    It also numbers the steps: ``step`` changes after every step in which a stream wrote
    through or became ready, which is how a stream knows it already wrote through in this one.
    """

    __slots__ = ("_loop", "_ready", "scheduled", "step")

    def __init__(self) -> None:
        self._ready: list[EventStream] = []
        self.scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.step = 0

    def mark(self, stream: EventStream) -> None:
        self._ready.append(stream)
        if not self.scheduled:
            self.end_step_soon()

    def end_step_soon(self) -> None:
        """Flush (and so end this step) once the current loop step is over."""
        self.scheduled = True
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        self.step += 1
        ready, self._ready = self._ready, []
        for stream in ready:
            stream.write_now()


class EventStream:
    __slots__ = (
        "_direct",
        "_parked",
        "_send",
        "_waiter",
        "channel",
        "chunks",
        "closed",
        "expires_at",
        "flusher",
        "heartbeat_ticks",
        "idle_ticks",
        "limit",
        "reason",
        "sending",
        "size",
        "subscription",
        "task",
        "wrote_in",
    )

    def __init__(
        self, channel: Channel, expires_at: float | None, heartbeat_ticks: int, flusher: Flusher
    ) -> None:
        self.channel = channel
        self.flusher = flusher
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = channel.options.max_buffer_bytes
        self.closed = False
        self.reason: str | None = None
        self.subscription: Subscription | None = None
        self.expires_at = expires_at
        self.heartbeat_ticks = heartbeat_ticks  # 0: never
        self.idle_ticks = 0
        self.sending = False  # a write is waiting for the client's socket
        self.task: asyncio.Task[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None  # set while the pump is parked
        self._send: Send | None = None
        # The listener's own HTTP/1.1 exchange: chunks written straight to its transport.
        self._direct: Exchange | None = None
        self._parked: Parked | None = None  # a direct write that has to wait, for the pump
        self.wrote_in = -1  # the Flusher step this stream last wrote through in

    # -- filled by the hub (synchronous, never blocks) -----------------------------------------

    def deliver(self, record: Message, position: Position) -> None:
        # The hub's pass calls this for every subscriber of every record, so the channel's
        # memo and the write-through checks are inlined here rather than called.
        if self.closed:
            return
        channel = self.channel
        if record is channel.last_record and position is channel.last_position:
            data = channel.last_bytes
        else:
            data = channel.encode(record, position)
        if data is None:
            return
        channel.delivered += 1
        channel.delivered_bytes += len(data)
        flusher = self.flusher
        waiter = self._waiter
        if (
            self.wrote_in != flusher.step  # first event of this loop step for this stream
            and not self.chunks
            and waiter is not None  # its task is parked...
            and not waiter.done()  # ...and nobody woke it yet
            and self._write_through(data)
        ):
            self.wrote_in = flusher.step
            if not flusher.scheduled:
                flusher.end_step_soon()
            return
        self._buffer(data)

    def reset(self, reason: str, position: Position | None) -> None:
        """The hub started the topic again (:class:`bridge.kafka.hub.ResettableSubscriber`)."""
        if self.closed:
            return
        self.push(self.channel.reset_event(reason, position))
        if position is None:  # the topic is gone
            self.close(CloseReason.TOPIC_DELETED)

    def push(self, data: bytes) -> None:
        """An event of the stream's own (heartbeat, token expiry), outside the hub's pass."""
        if self._parked_idle() and not self.chunks and self._write_through(data):
            return
        self._buffer(data)

    def _buffer(self, data: bytes) -> None:
        self.size += len(data)
        # Only a client whose socket is full (a write is waiting) can overflow: a burst handed
        # over in one synchronous pass (a fetch batch, a replay from the cache) goes out on the
        # next write, so it must not count against a client that keeps up.
        if self.size > self.limit and self.sending:
            self.close(CloseReason.SLOW)
            return
        self.chunks.append(data)
        self.idle_ticks = 0
        if len(self.chunks) == 1 and self._parked_idle():
            self.flusher.mark(self)

    def _write_through(self, data: bytes) -> bool:
        """Write ``data`` to the transport now (the caller checked the stream is idle)."""
        direct = self._direct
        if direct is None:
            return False
        try:
            written = direct.try_write(data)
        except Exception:
            # Never let one broken connection raise into the hub's pass over every subscriber;
            # the buffered path meets the error in this stream's own task instead.
            return False
        if written:
            self.idle_ticks = 0
        return written

    @property
    def writes_directly(self) -> bool:
        """Whether body chunks can bypass the server's HTTP stack (bridge/web/server.py ``Exchange.try_write``)."""
        return self._direct is not None

    def _parked_idle(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

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
                # A write is stuck on a client that does not read: interrupt it.
                self.task.cancel()
        if self.subscription is not None:
            self.subscription.close()
        self._wake()

    # -- the direct path -------------------------------------------------------------------------

    def write_now(self) -> None:
        """Write the buffer from outside the client's task, if its task is parked."""
        send = self._send
        if self.closed or not self.chunks or send is None or not self._parked_idle():
            return
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks, self.size = [], 0
        if self._write_through(body):  # (a writer that raises falls back to ASGI send here)
            return
        coroutine = send(_body(body))
        try:
            blocker = coroutine.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return  # written without waiting
        except Exception:
            # The connection broke under the write; the pump's next write will see it.
            return
        # The socket is full: the client's task finishes this write and anything after it.
        self._parked = (coroutine, blocker)  # type: ignore[assignment]
        self.sending = True
        self._wake()

    # -- the pump, in the client's task ----------------------------------------------------------

    async def pump(self, send: Send) -> None:
        """Write buffered events until the stream is closed."""
        loop = asyncio.get_running_loop()
        self._send = send
        try:
            if self.chunks:  # the first write starts the response body through ASGI
                chunks, self.chunks, self.size = self.chunks, [], 0
                await send(_body(b"".join(chunks)))
            owner = getattr(send, "__self__", None)
            # Our server's send is Exchange.send (HTTP/2 on Hypercorn: ASGI send only).
            self._direct = owner if isinstance(owner, Exchange) else None
            while True:
                parked = self._parked
                if parked is not None:
                    self._parked = None
                    self.sending = True
                    await _finish(*parked)
                    self.sending = False
                    continue
                chunks = self.chunks
                if chunks:
                    self.chunks, self.size = [], 0
                    self.sending = True
                    await send(_body(chunks[0] if len(chunks) == 1 else b"".join(chunks)))
                    self.sending = False
                    continue
                if self.closed:
                    return
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            self._send = self._direct = None
            if self._parked is not None:
                # Abandoned mid-write (cancelled): let it run its cleanup (Hypercorn's send lock).
                self._parked[0].close()
                self._parked = None

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


@types.coroutine
def _finish(coroutine: Coroutine[Any, Any, Any], blocker: Any) -> Generator[Any, None, Any]:
    """Finish a coroutine that was started by hand and suspended on ``blocker``, in this task.

    (A started coroutine cannot simply be awaited; this does what the task would have done:
    hand its futures to the event loop and pass results and cancellations back in.)
    """
    try:
        while True:
            try:
                yield blocker
            except BaseException as exc:
                blocker = coroutine.throw(exc)
            else:
                blocker = coroutine.send(None)
    except StopIteration as done:
        return done.value
