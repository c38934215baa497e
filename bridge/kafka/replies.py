"""Following a reply topic: requests wait on their correlation id (request-reply over Kafka).

The contract is bridge/model/request_reply.py's: a request record carries ``correlation-id`` and
``reply-to`` headers; whoever answers writes a record to the reply topic with the same
``correlation-id``. Every front-end with request-reply routes (HTTP, gRPC, MCP) waits the same way,
so the follower lives here once; each front-end maps a reply record to its own answer.

One :class:`ReplyFollower` per reply topic follows the topic live (through the hub's one consumer)
with a dict correlation id -> future, so a waiting request costs one dict entry. :meth:`find`
reads the topic from a position for a reply (a ``Location`` polled later, on any instance).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from bridge.kafka.hub import Hub, Start, Subscription
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.request_reply import CORRELATION_HEADER

CATCH_UP_S = 2.0


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
