"""The small interfaces the MQTT session-state modules are written against.

Sessions, wills, retained messages, shared groups and instance heartbeats need a compacted
topic to read and write (:class:`Table`), and the ingest needs a producer (:class:`Produce`).
The bridge's :class:`~bridge.kafka.table_store.TableStore` and :class:`~bridge.kafka.producer.Producer` are
what the running front-end passes; unit tests pass small fakes of these protocols, so the MQTT
logic can be tested without a broker (the end-to-end tests use the real ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from bridge.model.message import Message

OnDone = Callable[["asyncio.Future[Any]"], None]
#: Run a coroutine in the background, owned by the front-end (awaited at stop).
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class Table(Protocol):
    """A compacted topic read as the latest value per key (see bridge/kafka/table_store.py)."""

    def get(self, key: bytes) -> Message | None: ...

    def items(self) -> list[tuple[bytes | None, Message]]: ...

    async def put(
        self, key: bytes, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Any:
        """Write (None: delete), and return once this instance has read it back."""
        ...

    async def sync(self) -> None:
        """Return once this instance has read everything written before the call."""
        ...


class ReadBack(Protocol):
    """How far this instance has read a topic (a hub feed)."""

    async def wait_for(self, position: Mapping[int, int], timeout: float | None = None) -> None:
        """Return once the feed has read up to ``position`` (partition -> next offset)."""
        ...


class Produce(Protocol):
    """The producer of the publish path (see bridge/kafka/producer.py)."""

    timeout_s: float

    def submit_now(
        self, message: Message, acks: str | None = None, on_done: OnDone | None = None
    ) -> asyncio.Future[Any] | None:
        """The future of Kafka's acknowledgement, or None when ``submit`` must be awaited."""
        ...

    async def submit(
        self,
        message: Message,
        acks: str | None = None,
        linger_ms: int = 0,
        on_done: OnDone | None = None,
    ) -> asyncio.Future[Any]:
        """Queue ``message``; the future of Kafka's acknowledgement."""
        ...
