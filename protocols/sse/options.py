"""Per-route SSE settings, read once from the route's ``[routes.sse]`` table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge.model.config import ProtocolBinding

StartMode = Literal["live", "snapshot", "earliest"]

DEFAULT_HEARTBEAT_S = 15.0
DEFAULT_RETRY_MS = 2000
# A browser tab far behind is cheaper to reconnect (it resumes by id) than to buffer for.
DEFAULT_MAX_BUFFER_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class SseOptions:
    event: str | None  # the `event:` name; None lets the browser call it "message"
    start: StartMode  # where a stream with no id begins
    allow_earliest: bool  # may a client ask for ?from=earliest
    heartbeat_s: float  # 0: no heartbeats
    retry_ms: int  # the `retry:` sent on connect
    max_buffer_bytes: int  # per client; overflow closes the stream

    @classmethod
    def of(cls, binding: ProtocolBinding) -> SseOptions:
        start = binding.option("start", "live")
        return cls(
            event=binding.option("event"),
            start=start,
            allow_earliest=bool(binding.option("allow_earliest", start == "earliest")),
            heartbeat_s=float(binding.option("heartbeat_s", DEFAULT_HEARTBEAT_S)),
            retry_ms=int(binding.option("retry_ms", DEFAULT_RETRY_MS)),
            max_buffer_bytes=int(binding.option("max_buffer_bytes", DEFAULT_MAX_BUFFER_BYTES)),
        )
