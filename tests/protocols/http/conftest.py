"""Shared pieces for the HTTP front-end tests: routes, a client, and reading a topic back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from kafka_read import read_topic

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["userId", "matchId", "amount"],
    "properties": {
        "userId": {"type": "string", "minLength": 1},
        "matchId": {"type": "string"},
        "team": {"enum": ["home", "away"]},
        "amount": {"type": "number", "exclusiveMinimum": 0},
    },
    "additionalProperties": False,
}


def routes(bets: str, replies: str, table: str, schema_path: Path, extra: str = "") -> str:
    """Test routes: a validated bet POST with a reply topic, a plain produce, and fetch routes."""
    return f"""
[kafka.topics.{table}]
compact = true

[[routes]]
name = "bet"
topic = "{bets}"
key = "{{$body.userId}}"
content_type = "application/json"
schema = "{schema_path}"
dead_letter = "{bets}-dead"

[routes.http]
method = "POST"
path = "/bets"
idempotency = "required"
reply_topic = "{replies}"
max_body_bytes = 512
reply_wait_s = 5
wait_max_s = 10

[[routes]]
name = "note"
topic = "{bets}"
key = "{{match}}"
headers = {{ "note-source" = "http-{{match}}", "idem" = "{{$idempotency_key}}" }}

[[routes.http]]
method = "PUT"
path = "/matches/{{match}}/note"
idempotency = "optional"

[[routes.http]]
method = "POST"
path = "/matches/{{match}}/note"
idempotency = "optional"
idempotency_ttl_s = 1

[[routes]]
name = "profile"
topic = "{table}"
key = "{{user}}"

[[routes.http]]
method = "GET"
path = "/profiles/{{user}}"
wait_max_s = 10

[[routes.http]]
method = "POST"
path = "/profiles/{{user}}"
idempotency = "off"

[[routes.http]]
method = "DELETE"
path = "/profiles/{{user}}"
idempotency = "off"

[[routes]]
name = "profiles"
topic = "{table}"
key = "{{user}}"

[routes.http]
method = "GET"
path = "/profiles"
collection = true
wait_max_s = 10
{extra}
"""


@pytest.fixture
def http_routes() -> Callable[..., str]:
    """The route text builder, for tests that start their own bridges."""
    return routes


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "bet.json"
    path.write_text(json.dumps(SCHEMA))
    return path


@pytest.fixture
async def topics(new_topic) -> dict[str, str]:
    return {
        "bets": await new_topic(partitions=3, prefix="bets"),
        "replies": await new_topic(partitions=2, prefix="replies"),
        "table": f"profiles-{__import__('uuid').uuid4().hex[:8]}",
    }


@pytest.fixture
async def http_bridge(bridge_factory, topics, schema_file):
    """One bridge with the HTTP front-end on the session broker."""
    text = routes(topics["bets"], topics["replies"], topics["table"], schema_file)
    return await bridge_factory(text, frontends=["http"])


@pytest.fixture
async def client(http_bridge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{http_bridge.web.port}", timeout=30
    ) as c:
        yield c


ReadAll = Callable[[str], Awaitable[list]]


@pytest.fixture
def read_all(kafka_bootstrap: str) -> ReadAll:
    """Every record of a topic right now, read with a plain aiokafka consumer (highwater-exact)."""

    async def read(topic: str) -> list:
        return await read_topic(kafka_bootstrap, topic)

    return read
