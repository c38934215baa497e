"""Shared pieces for the MCP front-end tests (tests/protocols/mcp): routes, the SDK's client, a plain Kafka reader and
producer (never a mock of Kafka)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
from aiokafka import AIOKafkaProducer
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

SECRET = "an-mcp-test-secret-that-is-long-enough-for-hs256"
GUARD = f"""
[guard]
secret = "{SECRET}"
algorithms = ["HS256"]
issuer = "https://login.example"
"""

BET_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["matchId", "team", "amount"],
    "properties": {
        "matchId": {"type": "string", "minLength": 1},
        "team": {"enum": ["home", "away"]},
        "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000},
    },
    "additionalProperties": False,
}


def mcp_routes(odds: str, bets: str, verified: str, schema: Path) -> str:
    return f"""
[kafka.topics.{odds}]
partitions = 2
compact = true

[[routes]]
name = "odds"
topic = "{odds}"
key = "{{match}}"
content_type = "application/json"

[routes.mqtt]
topic = "odds/{{match}}"

[routes.access]
publish = ["odds-engine"]
subscribe = ["authenticated"]

[[routes]]
name = "place-bet"
topic = "{bets}"
key = "{{$identity}}"
content_type = "application/json"
schema = "{schema}"

[routes.http]
method = "POST"
path = "/bets"
idempotency = "optional"

[routes.access]
publish = ["bettor"]

[[routes]]
name = "my-bets"
topic = "{verified}"
key = "{{user}}"

[routes.sse]
path = "/users/{{user}}/bets"

[routes.access]
subscribe = ["bettor"]
identity = "user"
"""


def token(config: Any, subject: str, *roles: str) -> str:
    from bridge.edge.tokens import mint_token

    return mint_token(config.guard_settings, subject, roles)


@contextlib.asynccontextmanager
async def mcp_session(
    url: str, bearer: str | None, on_message: Callable[[Any], Any] | None = None
) -> AsyncIterator[ClientSession]:
    """The SDK's client over Streamable HTTP, with ``bearer`` as its token."""
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            kwargs: dict[str, Any] = {}
            if on_message is not None:
                kwargs["message_handler"] = on_message
            async with ClientSession(read, write, **kwargs) as session:
                await session.initialize()
                yield session


def result_json(result: Any) -> dict[str, Any]:
    """A tool result's JSON document (the text content the bridge writes)."""
    loaded: dict[str, Any] = json.loads(result.content[0].text)
    return loaded


@contextlib.asynccontextmanager
async def kafka_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()
