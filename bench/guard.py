"""Microbenchmark of the edge's per-request and per-record costs: token verification, audit
headers, metric updates. One figure per line, microseconds per operation.

Every figure has a baseline measured in the same run, so ratios compare across machines:
  * Guard.authenticate against a bare ``jwt.decode`` of the same token (the guard's own cost is
    key selection, claim mapping; its cache skips the signature check for repeated tokens);
  * build_message with audit headers against the same route with audit off;
  * metric helpers against an empty function call.

    .venv/bin/python bench/guard.py
"""

from __future__ import annotations

import time
import timeit
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.edge.guard import Guard
from bridge.edge.record_builder import build_message, resolver
from bridge.model.config import parse_config
from bridge.model.message import Origin
from bridge.telemetry import metrics

SECRET = "bench-secret-bench-secret-bench-secret-00"
ROUTES = """
[[routes]]
name = "bets"
topic = "bets"
key = "{user}"
[routes.mqtt]
topic = "users/{user}/bets"

[[routes]]
name = "quiet"
topic = "quiet"
key = "{user}"
audit = false
[routes.mqtt]
topic = "quiet/{user}/bets"
"""


def _us(stmt: Any, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=3)) / number * 1e6


def _pem(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _guard(toml: str) -> Guard:
    config = parse_config(f"[guard]\n{toml}\n{ROUTES}", Path("bench-routing.toml"), {})
    return Guard(config.guard_settings)


def tokens() -> list[tuple[str, Guard, str, Any, str]]:
    """(name, guard, token, verification key, algorithm)"""
    claims = {"sub": "alice", "scope": "bettor", "exp": int(time.time()) + 3600}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return [
        (
            "HS256",
            _guard(f'secret = "{SECRET}"'),
            jwt.encode(claims, SECRET, "HS256"),
            SECRET,
            "HS256",
        ),
        (
            "RS256",
            _guard(f'public_key = """{_pem(rsa_key)}"""'),
            jwt.encode(claims, rsa_key, "RS256"),
            rsa_key.public_key(),
            "RS256",
        ),
        (
            "ES256",
            _guard(f'public_key = """{_pem(ec_key)}"""'),
            jwt.encode(claims, ec_key, "ES256"),
            ec_key.public_key(),
            "ES256",
        ),
    ]


def main() -> None:
    results: list[tuple[str, float]] = []
    for name, guard, token, key, algorithm in tokens():
        number = 1_000 if name != "HS256" else 5_000

        def decode(token: str = token, key: Any = key, algorithm: str = algorithm) -> None:
            jwt.decode(token, key, [algorithm])

        def cached(guard: Guard = guard, token: str = token) -> None:
            guard.authenticate(token)

        base = _us(decode, number)

        def uncached(guard: Guard = guard, token: str = token) -> None:
            guard._cache.clear()
            guard.authenticate(token)

        results.append((f"{name} baseline jwt.decode", base))
        results.append((f"{name} Guard.authenticate, first use", _us(uncached, number)))
        results.append((f"{name} Guard.authenticate, cached", _us(cached, 50_000)))

    config = parse_config(ROUTES, Path("bench-routing.toml"), {})
    bets, quiet = config.routes
    origin = Origin("mqtt", "board-7", "alice", "203.0.113.9:40000")
    resolve = resolver(origin, "users/alice/bets")
    params = {"user": "alice"}
    base = _us(lambda: build_message(quiet, params, b"{}", origin, resolve), 20_000)
    results.append(("baseline build_message, audit off", base))
    results.append(
        (
            "build_message with 6 audit headers",
            _us(lambda: build_message(bets, params, b"{}", origin, resolve), 20_000),
        )
    )

    def nothing() -> None:
        pass

    child = metrics.MESSAGES_OUT.labels("bets", "mqtt")
    lag = metrics.FANOUT_LAG_SECONDS.labels("bets")
    results.append(("baseline empty call", _us(nothing, 100_000)))
    results.append(
        (
            "metrics.message_out (labels lookup)",
            _us(lambda: metrics.message_out("bets", "mqtt", 120, 1000), 50_000),
        )
    )
    results.append(("cached child .inc()", _us(lambda: child.inc(1000), 100_000)))
    results.append(("fan-out lag .observe() per record", _us(lambda: lag.observe(0.004), 100_000)))
    width = max(len(name) for name, _ in results)
    for name, value in results:
        print(f"{name:<{width}}  {value:8.2f} us")


if __name__ == "__main__":
    main()
