"""Authentication at the edge: turning a presented token into a :class:`Principal`.

Without a ``[guard]`` section every caller is anonymous and tokens are ignored. The JWT guard
(HS256/RS256/ES256 and relatives, issuer, audience, leeway, identity and roles claims) is
configured there; see docs/security.md. Where a token comes from (``Authorization: Bearer``,
``?access_token=``, the MQTT CONNECT password) is :mod:`bridge.edge.credentials`.

Front-ends call :meth:`Guard.authenticate` once per connection or request and
:func:`expiry_timer` to close a long-lived stream when its token expires.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt

from bridge.edge.access import ANONYMOUS, Principal
from bridge.model.guard_settings import GuardSettings, VerificationKey, load_guard_settings

# Verified tokens are remembered (bounded) so an HTTP client sending the same token with every
# request pays for one signature check, not one per request. Expiry is still checked per use.
CACHE_SIZE = 4096


class AuthError(Exception):
    """A presented token was refused. ``reason``: missing, malformed, algorithm, signature,
    expired, not_yet_valid, issuer, audience, claims."""

    def __init__(self, reason: str, detail: str, in_request: bool = False) -> None:
        self.reason = reason
        self.detail = detail
        # The request carried the token wrongly (scheme, twice, empty): RFC 6750's
        # invalid_request; otherwise the token itself is bad: invalid_token.
        self.in_request = in_request
        super().__init__(f"{reason}: {detail}")


# PyJWT's exceptions -> our reasons. Order matters: subclasses before their bases.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.MissingRequiredClaimError, "claims"),
    (jwt.InvalidIssuedAtError, "claims"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.DecodeError, "malformed"),
    (jwt.InvalidTokenError, "malformed"),
)


class Guard:
    def __init__(self, settings: GuardSettings | None) -> None:
        self.settings = settings
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    @classmethod
    def from_config(
        cls,
        settings: GuardSettings | Mapping[str, Any] | None,
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Guard:
        """From loaded settings, or from a raw ``[guard]`` table (files relative to base_dir)."""
        if settings is None or isinstance(settings, GuardSettings):
            return cls(settings)
        environ = os.environ if environ is None else environ
        return cls(load_guard_settings(settings, base_dir or Path.cwd(), environ))

    def authenticate(self, token: str | None) -> Principal:
        """The principal for ``token`` (None: anonymous). Raises :class:`AuthError`."""
        if self.settings is None or token is None:
            return ANONYMOUS
        cached = self._cache.get(token)
        if cached is not None:
            if (
                cached.expires_at is not None
                and time.time() >= cached.expires_at + self.settings.leeway_s
            ):
                del self._cache[token]
                raise AuthError("expired", "the token has expired")
            self._cache.move_to_end(token)
            return cached
        principal = self._verify(token, self.settings)
        self._cache[token] = principal
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str, settings: GuardSettings) -> Principal:
        if not token:
            raise AuthError("malformed", "the token is empty")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed", f"not a JWT: {exc}") from exc
        algorithm = header.get("alg")
        if algorithm not in settings.algorithms:
            allowed = ", ".join(settings.algorithms)
            raise AuthError(
                "algorithm", f"algorithm {algorithm!r} is not accepted (accepted: {allowed})"
            )
        candidates = _candidates(settings.keys, algorithm, header.get("kid"))
        if not candidates:
            raise AuthError("signature", f"no configured key for kid {header.get('kid')!r}")
        last: AuthError | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[algorithm],
                    issuer=settings.issuer,
                    audience=settings.audience,
                    leeway=settings.leeway_s,
                    options={"require": ["exp"] if settings.require_expiry else []},
                )
            except jwt.PyJWTError as exc:
                last = _auth_error(exc)
                if last.reason == "signature":
                    continue  # another key (rotation) may verify it
                raise last from exc
            return _principal(claims, settings)
        assert last is not None
        raise last


def _candidates(
    keys: tuple[VerificationKey, ...], algorithm: str, kid: str | None
) -> list[VerificationKey]:
    usable = [key for key in keys if algorithm in key.algorithms]
    if kid is not None and any(key.kid == kid for key in usable):
        return [key for key in usable if key.kid == kid]
    # An unknown kid may still be signed by a key configured without one (PEM, secret).
    return [key for key in usable if key.kid is None or kid is None]


def _auth_error(exc: jwt.PyJWTError) -> AuthError:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return AuthError(reason, str(exc) or kind.__name__)
    return AuthError("malformed", str(exc))


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``), or None."""
    current: Any = claims
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def _principal(claims: Mapping[str, Any], settings: GuardSettings) -> Principal:
    identity = claim(claims, settings.identity_claim)
    if isinstance(identity, bool) or not isinstance(identity, (str, int)) or identity == "":
        raise AuthError("claims", f"the token has no usable {settings.identity_claim!r} claim")
    roles = claim(claims, settings.roles_claim)
    if isinstance(roles, str):
        role_set = frozenset(roles.split())
    elif isinstance(roles, list):
        role_set = frozenset(str(role) for role in roles if isinstance(role, (str, int)))
    else:
        role_set = frozenset()
    expires = claims.get("exp")
    return Principal(
        identity=str(identity),
        roles=role_set,
        expires_at=float(expires) if isinstance(expires, (int, float)) else None,
        claims=dict(claims),
    )


def expiry_timer(
    principal: Principal, on_expiry: Callable[[], object]
) -> asyncio.TimerHandle | None:
    """Call ``on_expiry`` (in this event loop) when the principal's token expires.

    Returns the handle to ``cancel()`` when the connection ends first; None if it never expires.
    A front-end closes its SSE stream / MQTT connection from the callback (MQTT 5: DISCONNECT
    0xA0 "maximum connect time").
    """
    left = principal.seconds_left()
    if left is None:
        return None
    return asyncio.get_running_loop().call_later(max(left, 0.0), on_expiry)
