"""schemathesis against the bridge's own /openapi.json, with the demo's routing.toml (schemas,
idempotency, request-reply, fetch, a guard): generated and mutated requests, authorized and not,
must never get a 5xx. Event streams are left out (they never end; test_hostile_clients covers
their bad input)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
from harness import REPO

from bridge.model.config import parse_config
from bridge.process.runtime import Bridge
from bridge.process.workers import with_listeners

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`

DEMO_SECRET = "edgebridge-demo-secret-change-me-0123456789"  # routing.toml's public demo secret


def bettor_token() -> str:
    now = int(time.time())
    claims = {"sub": "alice", "scope": "bettor", "iss": "edgebridge-demo", "aud": "edgebridge"}
    return jwt.encode({**claims, "iat": now, "exp": now + 3600}, DEMO_SECRET, "HS256")


@pytest.fixture
async def demo_bridge(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Bridge:
    monkeypatch.delenv("EDGEBRIDGE_JWT_SECRET", raising=False)
    path = REPO / "routing.toml"
    # Nobody answers bets here: a request-reply gives up after 2 s (202 + Location), not 30 s.
    text = path.read_text().replace(
        'reply_topic = "bet-replies"', 'reply_topic = "bet-replies"\nreply_wait_s = 2'
    )
    # A ledger of its own: on the worker's shared broker, an instance another test left in the
    # default ledger's group would own half the keys, and bets would be forwarded to it.
    ledger = f'[listeners.http]\nidempotency_topic = "fuzz-ledger-{uuid.uuid4().hex[:10]}"'
    assert text.count("[listeners.http]") == 1
    text = text.replace("[listeners.http]", ledger)
    config = parse_config(text, path, {"KAFKA_BOOTSTRAP": kafka_bootstrap})
    config = with_listeners(config, "127.0.0.1", {"http": 0, "mqtt": 0, "admin": 0})
    bridge = Bridge(config, frontends=["http", "sse", "docs"])
    await bridge.start()
    yield bridge  # type: ignore[misc]
    await bridge.stop()


@pytest.mark.timeout(170)
async def test_schemathesis_finds_no_server_error(demo_bridge: Bridge, tmp_path: Path) -> None:
    assert demo_bridge.web is not None
    url = f"http://127.0.0.1:{demo_bridge.web.port}/openapi.json"
    report = tmp_path / "junit.xml"
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        url,
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "15",
        "--request-timeout",
        "10",
        "--exclude-operation-id-regex",
        "_stream$",
        "--header",
        f"Authorization: Bearer {bettor_token()}",
        "--seed",
        "8",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # its example database stays out of the checkout
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    print(text[-3000:])
    # The failing cases (with their curl) come before the warnings and the summary.
    failures = text[text.find("FAILURES") :] if "FAILURES" in text else text
    assert process.returncode == 0, failures[:6000]
    assert "No issues found" in text or "passed" in text.lower(), text[-3000:]
