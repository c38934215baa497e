"""Request-reply over Kafka: correlation ids, the shared reply follower, and reply -> response.

A request record carries ``correlation-id`` and ``reply-to`` headers; whoever answers writes a
record to the reply topic with the same ``correlation-id``. Its ``:status`` header becomes the
HTTP status, its other headers HTTP headers, its value the body.

One :class:`ReplyFollower` per reply topic per process follows the topic live (through the hub's
one consumer) with a dict correlation id -> future, so a waiting request costs one dict entry.
A ``202 Accepted`` carries a ``Location`` with the reply topic's position at request time; a GET
on it (on any instance, after any restart) reads the topic from there for the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from bridge.kafka.hub import Hub, Start, Subscription
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.request_reply import CORRELATION_HEADER, REPLY_TO_HEADER, STATUS_HEADER
from protocols.http.asgi import Response

CATCH_UP_S = 2.0
# Record headers that are about the Kafka exchange, not the HTTP response.
_INTERNAL = {CORRELATION_HEADER, REPLY_TO_HEADER, STATUS_HEADER}
_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "upgrade"}


def reply_response(record: Message) -> Response:
    """The HTTP response a reply record stands for."""
    status = 200
    raw_status = record.header(STATUS_HEADER)
    if raw_status is not None:
        try:
            status = int(raw_status.decode())
        except ValueError:
            status = 502
        if not 200 <= status <= 599:
            status = 502
    headers = []
    for name, value in record.headers:
        lowered = name.lower()
        if lowered in _INTERNAL or lowered in _HOP_BY_HOP or lowered.startswith(":"):
            continue
        try:
            headers.append((lowered, value.decode("latin-1")))
        except UnicodeDecodeError:
            continue
    return Response(status, headers, record.value or b"")


class _Match:
    """A one-off subscriber that resolves a future on the first record with a correlation id."""

    def __init__(self, correlation: bytes, future: asyncio.Future[Message]) -> None:
        self.correlation = correlation
        self.future = future

    def deliver(self, record: Message, position: Position) -> None:
        if not self.future.done() and record.header(CORRELATION_HEADER) == self.correlation:
            self.future.set_result(record)


class ReplyFollower:
    """Follows one reply topic for this process; requests wait on their correlation id."""

    def __init__(self, hub: Hub, topic: str) -> None:
        self.hub = hub
        self.topic = topic
        self._waiting: dict[bytes, asyncio.Future[Message]] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.hub.subscribe(self.topic, self, Start.LIVE)

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        for future in self._waiting.values():
            future.cancel()

    def position(self) -> Position:
        """Where the follower is now: a reply to a request produced later comes after this."""
        assert self._subscription is not None
        feed = self._subscription.feed
        return Position(feed.position, feed.epoch)

    @property
    def epoch(self) -> int:
        """The incarnation of the reply topic now (0: unknown)."""
        assert self._subscription is not None
        return self._subscription.feed.epoch

    def deliver(self, record: Message, position: Position) -> None:
        correlation = record.header(CORRELATION_HEADER)
        if correlation is None:
            return
        future = self._waiting.pop(correlation, None)
        if future is not None and not future.done():
            future.set_result(record)

    def expect(self, correlation: str) -> asyncio.Future[Message]:
        """Register before producing the request, so a fast reply cannot be missed."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[correlation.encode()] = future
        return future

    def forget(self, correlation: str) -> None:
        future = self._waiting.pop(correlation.encode(), None)
        if future is not None:
            future.cancel()

    async def wait(self, future: asyncio.Future[Message], timeout: float) -> Message | None:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None

    async def find(
        self, correlation: str, after: Mapping[int, int], timeout: float
    ) -> Message | None:
        """The reply with ``correlation`` written after ``after``, waiting up to ``timeout``."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        subscription = await self.hub.subscribe(
            self.topic, _Match(correlation.encode(), future), after
        )
        if timeout <= 0 and subscription.catch_up is not None:
            # Without a wait the answer is what Kafka holds now, but reading it takes a moment.
            timeout = CATCH_UP_S
        try:
            return await asyncio.wait_for(future, timeout) if timeout > 0 else _now_or_none(future)
        except TimeoutError:
            return None
        finally:
            subscription.close()
            with contextlib.suppress(BaseException):
                future.cancel()


def _now_or_none(future: asyncio.Future[Message]) -> Message | None:
    return future.result() if future.done() else None
