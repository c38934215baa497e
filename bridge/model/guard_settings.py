"""The ``[guard]`` section of routing.toml, loaded: verification keys and the claims policy.

Kept apart from :mod:`bridge.edge.guard` so that :mod:`bridge.model.config` can load and check it (with
file and line of a bad key) without importing the access layer, which imports the config.

Keys come from an inline HMAC secret (or an environment variable naming one), an inline PEM
public key, a PEM file, or a JWKS file. Each key knows which algorithms it can verify, so an
HS256 token can never be checked against an RSA public key used as an HMAC secret (the classic
algorithm-confusion attack) and an ES256 token only meets P-256 keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
DEFAULT_LEEWAY_S = 30.0
# The HMAC secret of the shipped demo routing.toml (overridden by $EDGEBRIDGE_JWT_SECRET). It is
# public, so a bridge running with it logs a warning: anyone can mint tokens for it.
DEMO_SECRET = "edgebridge-demo-secret-change-me-0123456789"
DEMO_SECRET_ENV = "EDGEBRIDGE_JWT_SECRET"


class GuardConfigError(ValueError):
    """A ``[guard]`` setting cannot be used; ``field`` names it (for file:line reporting)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key a token signature may be checked against."""

    algorithms: frozenset[str]
    key: Any  # bytes (HMAC secret) or a cryptography public key
    kid: str | None = None
    source: str = ""  # where it came from, for error messages


@dataclass(frozen=True, slots=True)
class GuardSettings:
    keys: tuple[VerificationKey, ...]
    algorithms: tuple[str, ...]
    issuer: tuple[str, ...] | None = None
    audience: tuple[str, ...] | None = None
    leeway_s: float = DEFAULT_LEEWAY_S
    identity_claim: str = "sub"
    roles_claim: str = "scope"
    require_expiry: bool = True
    # The HMAC secret is the documented demo default (no env override): worth a loud warning.
    demo_secret: bool = False


def load_guard_settings(
    raw: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str]
) -> GuardSettings | None:
    """Turn a schema-valid ``[guard]`` table into settings (None when there is no guard).

    Raises :class:`GuardConfigError` for a key that cannot be read or used.
    """
    if not raw:
        return None
    keys: list[VerificationKey] = []
    secret = _secret(raw, environ)
    if secret is not None:
        keys.append(VerificationKey(HMAC_ALGORITHMS, secret.encode(), source="secret"))
    if "public_key" in raw:
        keys.append(_pem_key(raw["public_key"].encode(), "public_key", "inline PEM"))
    if "public_key_file" in raw:
        path = _resolve(base_dir, raw["public_key_file"])
        keys.append(_pem_key(_read(path, "public_key_file"), "public_key_file", str(path)))
    if "jwks_file" in raw:
        keys.extend(_jwks(_resolve(base_dir, raw["jwks_file"])))
    algorithms = _algorithms(raw.get("algorithms"), keys)
    return GuardSettings(
        keys=tuple(keys),
        algorithms=algorithms,
        issuer=_strings(raw.get("issuer")),
        audience=_strings(raw.get("audience")),
        leeway_s=float(raw.get("leeway_s", DEFAULT_LEEWAY_S)),
        identity_claim=raw.get("identity_claim", "sub"),
        roles_claim=raw.get("roles_claim", "scope"),
        require_expiry=raw.get("require_expiry", True),
        demo_secret=secret == DEMO_SECRET,
    )


def _secret(raw: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    env_name = raw.get("secret_env")
    if env_name and environ.get(env_name):
        return environ[env_name]
    if "secret" in raw:
        return str(raw["secret"])
    if env_name:
        raise GuardConfigError(
            "secret_env", f"environment variable {env_name} is not set (and no secret)"
        )
    return None


def _resolve(base_dir: Path, value: str) -> Path:
    return (base_dir / value).resolve()


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GuardConfigError(field, f"cannot read {path}: {exc.strerror}") from exc


def _pem_key(data: bytes, field: str, source: str) -> VerificationKey:
    """A PEM public key or X.509 certificate."""
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise GuardConfigError(
            field, f"{source} is not a PEM public key or certificate: {exc}"
        ) from exc
    return VerificationKey(_algorithms_of(key, field, source), key, source=source)


def _algorithms_of(key: Any, field: str, source: str) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return frozenset({EC_ALGORITHMS[key.curve.name]})
    raise GuardConfigError(field, f"{source}: unsupported key type {type(key).__name__}")


def _jwks(path: Path) -> list[VerificationKey]:
    try:
        document = json.loads(_read(path, "jwks_file"))
        key_set = jwt.PyJWKSet.from_dict(document)
    except (json.JSONDecodeError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
        raise GuardConfigError("jwks_file", f"{path} is not a usable JWKS: {exc}") from exc
    keys: list[VerificationKey] = []
    for jwk in key_set.keys:
        source = f"{path} kid={jwk.key_id}"
        if jwk.key_type == "oct":
            algorithms = HMAC_ALGORITHMS
        else:
            algorithms = _algorithms_of(jwk.key, "jwks_file", source)
        declared = jwk._jwk_data.get("alg")
        if declared:
            algorithms = algorithms & {declared}
        keys.append(VerificationKey(frozenset(algorithms), jwk.key, jwk.key_id, source))
    return keys


def _algorithms(
    configured: Sequence[str] | None, keys: Sequence[VerificationKey]
) -> tuple[str, ...]:
    usable = set().union(*(k.algorithms for k in keys)) if keys else set()
    if configured is None:
        return tuple(sorted(usable))
    for algorithm in configured:
        if algorithm not in usable:
            raise GuardConfigError(
                "algorithms", f"{algorithm} is listed but no configured key can verify it"
            )
    return tuple(configured)


def _strings(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)
