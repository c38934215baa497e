"""Who is asking, and may they: principals and per-route authorization, for every protocol.

Front-ends call :func:`authorize` before anything reaches Kafka (publish/produce) or before a
subscription starts (subscribe/SSE/fetch); a denial never produces a record.

Route rules (``[routes.access]``): a missing list means "anyone"; ``"anonymous"`` also means
anyone; ``"authenticated"`` means any verified token; other entries are role names from the
token. ``identity = "user"`` additionally requires the address parameter ``{user}`` to equal the
caller's identity, so ``/users/{user}/bets`` only streams a user's own bets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.model.config import ANONYMOUS_ROLE, AUTHENTICATED_ROLE, Route

Action = Literal["publish", "subscribe"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or anonymous) caller."""

    identity: str | None
    roles: frozenset[str] = frozenset()
    expires_at: float | None = None  # epoch seconds; connections close when it passes
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return self.identity is not None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def seconds_left(self, now: float | None = None) -> float | None:
        return None if self.expires_at is None else self.expires_at - (now or time.time())


ANONYMOUS = Principal(None)


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request was refused; ``unauthenticated`` means a token would help (HTTP 401)."""

    reason: str
    unauthenticated: bool


def authorize(
    route: Route, action: Action, principal: Principal, params: Mapping[str, str]
) -> Denial | None:
    """None if allowed, else the reason it is not."""
    allowed = route.access.publish if action == "publish" else route.access.subscribe
    if allowed is not None and ANONYMOUS_ROLE not in allowed:
        if not principal.authenticated:
            return Denial(f"route {route.name}: {action} requires a token", unauthenticated=True)
        if AUTHENTICATED_ROLE not in allowed and not principal.roles.intersection(allowed):
            wanted = ", ".join(sorted(allowed))
            return Denial(
                f"route {route.name}: {action} requires one of the roles: {wanted}", False
            )
    if route.access.identity is not None:
        owner = params.get(route.access.identity)
        if owner is not None and (not principal.authenticated or owner != principal.identity):
            return Denial(
                f"route {route.name}: only {{{route.access.identity}}} itself may {action} here",
                unauthenticated=not principal.authenticated,
            )
    return None
