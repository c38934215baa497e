"""CORS for every web front-end, decided once (``[listeners.http] cors_origins``).

* An origin named in ``cors_origins`` is echoed with ``Access-Control-Allow-Credentials: true``
  (and ``Vary: Origin``): its pages may send cookies and tokens and read the answer.
* ``"*"`` lets any other origin read answers **without credentials**: the response says
  ``Access-Control-Allow-Origin: *`` and never allows credentials, so a foreign page cannot make
  a credentialed call on a user's behalf. (Echoing any origin with credentials, as before, let
  every web site do exactly that.)
* A preflight names only the methods the requested path allows, and the request headers a
  client of this bridge sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# What pages send: tokens, JSON, Idempotency-Key / Prefer / If-None-Match (produce and fetch),
# Last-Event-ID / Cache-Control (EventSource polyfills that set them by hand).
ALLOW_HEADERS = (
    "authorization, content-type, idempotency-key, prefer, if-none-match, last-event-id, "
    "cache-control, accept"
)
# What pages must be able to read from answers.
EXPOSE_HEADERS = "ETag, Location, Idempotent-Replayed, Retry-After, Preference-Applied, Allow"
MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    listed: frozenset[str]  # origins allowed with credentials
    any_origin: bool  # "*": every other origin, without credentials

    @classmethod
    def of(cls, origins: Iterable[str] | None) -> CorsPolicy:
        names = frozenset(origins or ())
        return cls(names - {"*"}, "*" in names)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin in self.listed)

    def _origin_headers(self, origin: str | None) -> list[tuple[str, str]]:
        if origin is None:
            return []
        if origin in self.listed:
            return [
                ("access-control-allow-origin", origin),
                ("access-control-allow-credentials", "true"),
                ("vary", "Origin"),
            ]
        if self.any_origin:
            return [("access-control-allow-origin", "*")]
        return []

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers for an actual (non-preflight) response to ``origin``."""
        headers = self._origin_headers(origin)
        if headers:
            headers.append(("access-control-expose-headers", EXPOSE_HEADERS))
        return headers

    def preflight_headers(
        self, origin: str | None, methods: Sequence[str]
    ) -> list[tuple[str, str]]:
        """Headers for the answer to ``OPTIONS`` from ``origin`` on a path allowing ``methods``."""
        headers = self._origin_headers(origin)
        if headers:
            headers += [
                ("access-control-allow-methods", ", ".join(methods)),
                ("access-control-allow-headers", ALLOW_HEADERS),
                ("access-control-max-age", str(MAX_AGE_S)),
            ]
        return headers


def encoded(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as ASGI wants them (bytes)."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
