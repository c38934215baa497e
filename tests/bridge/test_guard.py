"""The JWT guard: real keys (HMAC, RSA, EC P-256), PEM and JWKS files, every refusal reason, and
the token sources of each protocol. Configuration goes through routing.toml like in production."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.edge.access import authorize
from bridge.edge.credentials import (
    bearer_token,
    mqtt_token,
    query_token,
    request_token,
    www_authenticate,
)
from bridge.edge.guard import AuthError, Guard, expiry_timer
from bridge.edge.tokens import mint_token
from bridge.model.config import ConfigError, parse_config
from bridge.model.guard_settings import DEMO_SECRET

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
ROUTES = """
[[routes]]
name = "my-bets"
topic = "bets-verified"
key = "{user}"
[routes.sse]
path = "/users/{user}/bets"
[routes.access]
subscribe = ["bettor"]
identity = "user"
"""


def config(guard_toml: str, directory: Path, environ: dict[str, str] | None = None) -> Any:
    return parse_config(
        f"[guard]\n{guard_toml}\n{ROUTES}", directory / "routing.toml", environ or {}
    )


def guard(guard_toml: str, directory: Path, environ: dict[str, str] | None = None) -> Guard:
    return Guard(config(guard_toml, directory, environ).guard_settings)


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "scope": "bettor viewer", "iat": now, "exp": now + 600, **extra}


def pem_public(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- algorithms and key sources -------------------------------------------------------------------


def test_hs256_inline_secret_gives_identity_roles_and_expiry(tmp_path: Path) -> None:
    g = guard(f'secret = "{SECRET}"', tmp_path)
    body = claims()
    principal = g.authenticate(jwt.encode(body, SECRET, algorithm="HS256"))
    assert principal.identity == "alice"
    assert principal.roles == {"bettor", "viewer"}
    assert principal.expires_at == body["exp"]
    assert principal.claims["scope"] == "bettor viewer"


def test_secret_from_environment_wins_over_inline(tmp_path: Path) -> None:
    toml = 'secret_env = "EB_SECRET"\nsecret = "inline-secret-inline-secret-inline-secret"'
    g = guard(toml, tmp_path, {"EB_SECRET": SECRET})
    assert g.authenticate(jwt.encode(claims(), SECRET, algorithm="HS256")).identity == "alice"
    with pytest.raises(AuthError) as refused:
        g.authenticate(jwt.encode(claims(), "inline-secret-inline-secret-inline-secret", "HS256"))
    assert refused.value.reason == "signature"


def test_missing_secret_environment_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        config('secret_env = "EB_NOT_SET"', tmp_path)
    assert "guard.secret_env: environment variable EB_NOT_SET is not set" in str(error.value)


def test_rs256_inline_pem(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    g = guard(f'public_key = """{pem_public(rsa_key)}"""', tmp_path)
    assert g.authenticate(jwt.encode(claims(), rsa_key, algorithm="RS256")).identity == "alice"


def test_es256_pem_file(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ec.pem").write_text(pem_public(ec_key))
    g = guard('public_key_file = "keys/ec.pem"', tmp_path)
    assert g.settings is not None and g.settings.algorithms == ("ES256",)
    assert g.authenticate(jwt.encode(claims(), ec_key, algorithm="ES256")).identity == "alice"


def test_jwks_file_picks_the_key_by_kid(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for kid, private in (("rsa-1", rsa_key), ("ec-1", ec_key), ("rsa-2", other)):
        keys.append({**_jwk_of(private), "kid": kid})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    g = guard('jwks_file = "jwks.json"', tmp_path)
    rs = jwt.encode(claims(sub="bob"), other, algorithm="RS256", headers={"kid": "rsa-2"})
    assert g.authenticate(rs).identity == "bob"
    es = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert g.authenticate(es).identity == "alice"
    # Signed by rsa-1 but claiming to be rsa-2: only rsa-2 is tried.
    lying = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-2"})
    with pytest.raises(AuthError) as refused:
        g.authenticate(lying)
    assert refused.value.reason == "signature"


def _jwk_json(private: Any) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        return jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())
    return jwt.algorithms.ECAlgorithm.to_jwk(private.public_key())


def _jwk_of(private: Any) -> dict[str, Any]:
    return dict(json.loads(_jwk_json(private)))


def test_bad_key_files_are_config_errors_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "not.pem").write_text("hello")
    (tmp_path / "bad.json").write_text('{"keys": []}')
    for toml, field, words in (
        ('public_key_file = "missing.pem"', "guard.public_key_file", "cannot read"),
        ('public_key_file = "not.pem"', "guard.public_key_file", "not a PEM public key"),
        ('jwks_file = "bad.json"', "guard.jwks_file", "not a usable JWKS"),
        (f'secret = "{SECRET}"\nalgorithms = ["RS256"]', "guard.algorithms", "no configured key"),
    ):
        with pytest.raises(ConfigError) as error:
            config(toml, tmp_path)
        assert field in str(error.value) and words in str(error.value), str(error.value)


def test_guard_without_any_key_is_refused_by_the_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        config('issuer = "x"', tmp_path)
    assert "guard" in str(error.value)


# -- refusals -------------------------------------------------------------------------------------


GUARDED = (
    f'secret = "{SECRET}"\nissuer = "https://id.example"\naudience = "edgebridge"\nleeway_s = 5'
)


def signed(key: Any = SECRET, algorithm: str = "HS256", without: str = "", **extra: Any) -> str:
    """A token for the GUARDED settings, with claims changed, added or left out."""
    body = claims(**{"iss": "https://id.example", "aud": "edgebridge", **extra})
    body.pop(without, None)
    return jwt.encode(body, key, algorithm)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: signed(exp=int(time.time()) - 60), "expired"),
        (lambda: signed(nbf=int(time.time()) + 60), "not_yet_valid"),
        (lambda: signed(iss="https://evil.example"), "issuer"),
        (lambda: signed(aud="someone-else"), "audience"),
        (lambda: signed(key="wrong-secret-wrong-secret-wrong-secret"), "signature"),
        (lambda: signed()[:-4] + "AAAA", "signature"),
        (lambda: "not-a-jwt", "malformed"),
        (lambda: "", "malformed"),
        (lambda: signed(without="exp"), "claims"),
        (lambda: signed(without="sub"), "claims"),
        (lambda: signed(algorithm="HS512"), "algorithm"),
        (lambda: signed(key=None, algorithm="none"), "algorithm"),
    ],
    ids=[
        "expired",
        "nbf",
        "issuer",
        "audience",
        "wrong-secret",
        "tampered",
        "garbage",
        "empty",
        "no-exp",
        "no-sub",
        "hs512-not-accepted",
        "alg-none",
    ],
)
def test_refusals_name_their_reason(tmp_path: Path, token: Any, reason: str) -> None:
    g = guard(GUARDED + '\nalgorithms = ["HS256"]', tmp_path)
    with pytest.raises(AuthError) as refused:
        g.authenticate(token())
    assert refused.value.reason == reason, refused.value


def test_leeway_tolerates_small_clock_skew(tmp_path: Path) -> None:
    g = guard(GUARDED, tmp_path)
    assert g.authenticate(signed(exp=int(time.time()) - 2)).identity == "alice"


def test_cached_token_is_refused_once_it_expires(tmp_path: Path) -> None:
    g = guard(f'secret = "{SECRET}"\nleeway_s = 0', tmp_path)
    token = jwt.encode(claims(exp=int(time.time()) + 2), SECRET, "HS256")
    assert g.authenticate(token).identity == "alice"
    assert g.authenticate(token).identity == "alice"  # from the cache
    time.sleep(2.2)
    with pytest.raises(AuthError) as refused:
        g.authenticate(token)
    assert refused.value.reason == "expired"


def test_rsa_public_key_cannot_be_used_as_an_hmac_secret(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Algorithm confusion: an HS256 token "signed" with the RSA public key must not pass."""
    pem = pem_public(rsa_key)
    g = guard(f'public_key = """{pem}"""', tmp_path)
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode())
    forged = (
        signing_input
        + "."
        + b64(hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest())
    )
    with pytest.raises(AuthError) as refused:
        g.authenticate(forged)
    assert refused.value.reason == "algorithm"


def test_custom_identity_and_nested_roles_claims(tmp_path: Path) -> None:
    g = guard(
        f'secret = "{SECRET}"\nidentity_claim = "email"\nroles_claim = "realm_access.roles"',
        tmp_path,
    )
    token = jwt.encode(
        claims(email="a@example.com", realm_access={"roles": ["bettor", "vip"]}), SECRET, "HS256"
    )
    principal = g.authenticate(token)
    assert principal.identity == "a@example.com"
    assert principal.roles == {"bettor", "vip"}


def test_without_guard_every_caller_is_anonymous(tmp_path: Path) -> None:
    g = Guard(parse_config(ROUTES, tmp_path / "routing.toml", {}).guard_settings)
    assert not g.enabled
    assert not g.authenticate("anything").authenticated


def test_no_token_is_anonymous_and_authorization_decides(tmp_path: Path) -> None:
    cfg = config(f'secret = "{SECRET}"', tmp_path)
    g = Guard(cfg.guard_settings)
    route = cfg.routes[0]
    anonymous = g.authenticate(None)
    denial = authorize(route, "subscribe", anonymous, {"user": "alice"})
    assert denial is not None and denial.unauthenticated
    alice = g.authenticate(jwt.encode(claims(), SECRET, "HS256"))
    assert authorize(route, "subscribe", alice, {"user": "alice"}) is None
    denial = authorize(route, "subscribe", alice, {"user": "bob"})
    assert denial is not None and not denial.unauthenticated


# -- token sources and refusal wording ----------------------------------------------------------


def test_token_sources_per_protocol() -> None:
    token = jwt.encode(claims(), SECRET, "HS256")
    assert bearer_token(f"Bearer {token}") == token
    assert bearer_token(f"bearer  {token} ".encode()) == token
    assert bearer_token(None) is None
    assert query_token(f"lastEventId=x&access_token={token}") == token
    assert request_token(None, f"access_token={token}".encode()) == token
    assert request_token(f"Bearer {token}", f"access_token={token}") == token
    assert mqtt_token("device-7", token.encode()) == token
    assert mqtt_token(token, None) == token
    assert mqtt_token("device-7", None) is None
    for bad in (
        lambda: bearer_token("Basic dXNlcjpwdw=="),
        lambda: bearer_token("Bearer "),
        lambda: query_token("access_token=a&access_token=b"),
        lambda: request_token(f"Bearer {token}", "access_token=other"),
    ):
        with pytest.raises(AuthError) as refused:
            bad()
        assert refused.value.reason == "malformed"


def test_www_authenticate_follows_rfc6750() -> None:
    assert www_authenticate() == 'Bearer realm="edgebridge"'
    expired = AuthError("expired", 'Signature has "expired"')
    assert www_authenticate(expired) == (
        'Bearer realm="edgebridge", error="invalid_token", '
        'error_description="expired: Signature has ?expired?"'
    )
    # RFC 6750 3.1: a token carried wrongly is invalid_request; a malformed token invalid_token.
    assert 'error="invalid_request"' in www_authenticate(AuthError("malformed", "x", True))
    assert 'error="invalid_token"' in www_authenticate(AuthError("malformed", "not a JWT"))


async def test_expiry_timer_fires_when_the_token_expires(tmp_path: Path) -> None:
    g = guard(f'secret = "{SECRET}"\nleeway_s = 0', tmp_path)
    principal = g.authenticate(jwt.encode(claims(exp=int(time.time()) + 1), SECRET, "HS256"))
    fired = asyncio.Event()
    handle = expiry_timer(principal, fired.set)
    assert handle is not None
    await asyncio.wait_for(fired.wait(), 10)
    assert principal.expired()
    assert expiry_timer(g.authenticate(None), fired.set) is None


# -- minting -------------------------------------------------------------------------------------


def test_minted_tokens_pass_the_same_guard(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    cfg = config(GUARDED, tmp_path)
    token = mint_token(cfg.guard_settings, "carol", ["bettor"], ttl_s=60)
    principal = Guard(cfg.guard_settings).authenticate(token)
    assert (principal.identity, principal.roles) == ("carol", {"bettor"})
    (tmp_path / "ec.pem").write_text(pem_public(ec_key))
    ec_cfg = config('public_key_file = "ec.pem"\nroles_claim = "roles"', tmp_path)
    token = mint_token(ec_cfg.guard_settings, "dave", ["a", "b"], private_key=ec_key)
    assert Guard(ec_cfg.guard_settings).authenticate(token).roles == {"a", "b"}


def test_shipped_demo_config_and_token_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`edgebridge token` signs with the demo guard; the secret comes from the environment."""
    from bridge.model.config import load_config
    from bridge.process.cli import main

    repo = Path(__file__).resolve().parents[2]
    assert (
        main(
            ["token", "--config", str(repo / "routing.toml"), "--sub", "alice", "--role", "bettor"]
        )
        == 0
    )
    token = capsys.readouterr().out.strip()
    demo = load_config(repo / "routing.toml", {})
    assert demo.guard_settings is not None and demo.guard_settings.demo_secret
    principal = Guard(demo.guard_settings).authenticate(token)
    assert (principal.identity, principal.roles) == ("alice", {"bettor"})
    assert (
        jwt.decode(token, DEMO_SECRET, ["HS256"], audience="edgebridge")["iss"] == "edgebridge-demo"
    )
    production = load_config(repo / "routing.toml", {"EDGEBRIDGE_JWT_SECRET": SECRET})
    assert production.guard_settings is not None and not production.guard_settings.demo_secret
    with pytest.raises(AuthError):
        Guard(production.guard_settings).authenticate(token)
