"""Minting tokens the configured guard accepts: for the demo page, scoreboards and tests.

With an HMAC guard (the shipped demo: HS256, secret from ``$EDGEBRIDGE_JWT_SECRET``) the
configured secret signs; with an RSA/EC guard a private key must be given, since the bridge
only holds public keys. Claims follow the guard's settings (identity and roles claims, issuer,
audience), so a minted token passes the same checks a real identity provider's would.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from bridge.model.guard_settings import HMAC_ALGORITHMS, GuardSettings


class MintError(ValueError):
    pass


def mint_token(
    settings: GuardSettings,
    subject: str,
    roles: Sequence[str] = (),
    ttl_s: float = 3600,
    private_key: Any = None,
    algorithm: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT for ``subject`` with ``roles``, valid for ``ttl_s`` seconds."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"iat": issued, "exp": issued + int(ttl_s)}
    _put(claims, settings.identity_claim, subject)
    # "scope" is a space-separated string by convention (RFC 8693); other role claims are lists.
    _put(
        claims,
        settings.roles_claim,
        " ".join(roles) if settings.roles_claim == "scope" else list(roles),
    )
    if settings.issuer:
        claims["iss"] = settings.issuer[0]
    if settings.audience:
        claims["aud"] = settings.audience[0]
    claims.update(extra_claims or {})
    if private_key is not None:
        chosen = algorithm or next(
            (a for a in settings.algorithms if a not in HMAC_ALGORITHMS), None
        )
        if chosen is None:
            raise MintError("the guard accepts no public-key algorithm; pass --algorithm")
        return jwt.encode(claims, private_key, algorithm=chosen)
    secret = next((k.key for k in settings.keys if k.algorithms & HMAC_ALGORITHMS), None)
    hmac = [a for a in settings.algorithms if a in HMAC_ALGORITHMS]
    if secret is None or not hmac:
        raise MintError("the guard has no HMAC secret; pass a private key (--key FILE)")
    chosen = algorithm or ("HS256" if "HS256" in hmac else hmac[0])
    return jwt.encode(claims, secret, algorithm=chosen)


def _put(claims: dict[str, Any], path: str, value: Any) -> None:
    """Set a claim by dotted path (``realm_access.roles``), creating objects on the way."""
    *parents, last = path.split(".")
    target = claims
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
