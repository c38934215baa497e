"""The message every front-end speaks: a Kafka record plus where it came from.

Front-ends turn their traffic into :class:`Message` objects and back; the core never needs to
know which protocol a message came from except through :class:`Origin`, which is metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sent a message, for audit headers, logs and No Local."""

    protocol: str  # "mqtt", "sse", "http", "kafka"
    client_id: str | None = None
    principal: str | None = None
    remote_address: str | None = None
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Message:
    """A Kafka record: before it is produced (no partition/offset) or as read back."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None
    partition: int | None = None
    offset: int | None = None
    origin: Origin | None = None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (Kafka allows repeats), or None."""
        found = None
        for header, value in self.headers:
            if header == name:
                found = value
        return found

    def header_values(self, name: str) -> list[bytes]:
        return [value for header, value in self.headers if header == name]


@dataclass(frozen=True, slots=True)
class Produced:
    """Kafka's acknowledgement of a produced record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
