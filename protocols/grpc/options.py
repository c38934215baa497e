"""``[routes.grpc]`` and ``[listeners.grpc]`` options, with their defaults, read once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 50051
DEFAULT_MAX_QUEUED = 1024
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 1000
DEFAULT_REPLY_WAIT_S = 10.0
DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_LEDGER_TOPIC = "edgebridge.ledger.grpc"
DEFAULT_LEDGER_PARTITIONS = 12
DEFAULT_SESSION_TIMEOUT_MS = 6000


@dataclass(frozen=True, slots=True)
class GrpcRouteOptions:
    start: str = "live"  # live | snapshot | earliest
    allow_earliest: bool = False
    reply_topic: str | None = None
    reply_wait_s: float = DEFAULT_REPLY_WAIT_S
    idempotency: str = "optional"  # required | optional | off (the idempotency-key metadata)
    idempotency_ttl_s: float = DEFAULT_TTL_S

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> GrpcRouteOptions:
        start = str(raw.get("start", "live"))
        return cls(
            start=start,
            allow_earliest=bool(raw.get("allow_earliest", start == "earliest")),
            reply_topic=raw.get("reply_topic"),
            reply_wait_s=float(raw.get("reply_wait_s", DEFAULT_REPLY_WAIT_S)),
            idempotency=str(raw.get("idempotency", "optional")),
            idempotency_ttl_s=float(raw.get("idempotency_ttl_s", DEFAULT_TTL_S)),
        )

    def starts(self) -> list[str]:
        """The ``start`` values a client may ask for."""
        return sorted({self.start, "live", *(["earliest"] if self.allow_earliest else [])})


@dataclass(frozen=True, slots=True)
class GrpcListenerOptions:
    max_queued: int = DEFAULT_MAX_QUEUED
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    tls_cert: str | None = None
    tls_key: str | None = None
    advertise: str | None = None
    idempotency_topic: str = DEFAULT_LEDGER_TOPIC
    idempotency_partitions: int = DEFAULT_LEDGER_PARTITIONS
    idempotency_session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> GrpcListenerOptions:
        return cls(
            max_queued=int(raw.get("max_queued", DEFAULT_MAX_QUEUED)),
            max_message_bytes=int(raw.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)),
            max_concurrent_streams=int(
                raw.get("max_concurrent_streams", DEFAULT_MAX_CONCURRENT_STREAMS)
            ),
            tls_cert=raw.get("tls_cert"),
            tls_key=raw.get("tls_key"),
            advertise=raw.get("advertise"),
            idempotency_topic=str(raw.get("idempotency_topic", DEFAULT_LEDGER_TOPIC)),
            idempotency_partitions=int(
                raw.get("idempotency_partitions", DEFAULT_LEDGER_PARTITIONS)
            ),
            idempotency_session_timeout_ms=int(
                raw.get("idempotency_session_timeout_ms", DEFAULT_SESSION_TIMEOUT_MS)
            ),
        )
