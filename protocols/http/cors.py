"""CORS for the HTTP routes, configured per listener (``[listeners.http] cors_origins``).

Browser pages on another origin send ``Idempotency-Key``, ``Prefer`` and ``If-None-Match`` (which
need a preflight) and read ``ETag``, ``Location`` and ``Idempotent-Replayed`` (which must be
exposed, or the page cannot see them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Prefer, If-None-Match"
EXPOSE_HEADERS = "ETag, Location, Idempotent-Replayed, Retry-After, Preference-Applied, Allow"
MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class Cors:
    origins: frozenset[str]

    @classmethod
    def from_options(cls, origins: Sequence[str] | None) -> Cors:
        return cls(frozenset(origins or ()))

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and ("*" in self.origins or origin in self.origins)

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers for an actual (non-preflight) response."""
        if not self.allowed(origin):
            return []
        assert origin is not None
        return [
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", EXPOSE_HEADERS),
            ("vary", "Origin"),
        ]

    def preflight_headers(
        self, origin: str | None, methods: Sequence[str]
    ) -> list[tuple[str, str]]:
        if not self.allowed(origin):
            return []
        assert origin is not None
        return [
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", ", ".join(methods)),
            ("access-control-allow-headers", ALLOW_HEADERS),
            ("access-control-max-age", str(MAX_AGE_S)),
            ("vary", "Origin"),
        ]
