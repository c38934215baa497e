"""The HTTP options of a route (``[routes.http]``), with their defaults, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.model.config import ProtocolBinding

DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_WAIT_MAX_S = 30.0
DEFAULT_REPLY_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class HttpOptions:
    method: str
    idempotency: str  # required | optional | off
    reply_topic: str | None
    max_body_bytes: int
    collection: bool
    wait_max_s: float  # cap on Prefer: wait
    reply_wait_s: float  # how long a request waits for its reply without Prefer: wait
    idempotency_ttl_s: float

    @classmethod
    def of(cls, binding: ProtocolBinding) -> HttpOptions:
        wait_max = float(binding.option("wait_max_s", DEFAULT_WAIT_MAX_S))
        return cls(
            method=str(binding.option("method")),
            idempotency=str(binding.option("idempotency", "optional")),
            reply_topic=binding.option("reply_topic"),
            max_body_bytes=int(binding.option("max_body_bytes", DEFAULT_MAX_BODY)),
            collection=bool(binding.option("collection", False)),
            wait_max_s=wait_max,
            reply_wait_s=min(float(binding.option("reply_wait_s", DEFAULT_REPLY_WAIT_S)), wait_max),
            idempotency_ttl_s=float(binding.option("idempotency_ttl_s", DEFAULT_TTL_S)),
        )

    def lease_s(self, kafka_timeout_s: float) -> float:
        """How long a pending claim holds its key: longer than the slowest winner could take
        (two Kafka writes and the reply wait), so only a dead winner loses its key."""
        return max(30.0, self.wait_max_s + 3 * kafka_timeout_s)
