"""Idempotency keys on MCP publish tools, with the SDK's client against real bridges on the
embedded broker: the first result replayed, another record under the same key refused, an
in-flight duplicate told to retry, and never a second record (read back with a plain aiokafka
consumer), on one instance, across two instances and across a restart."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from harness import start_bridge
from kafka_read import read_topic
from mcp_support import GUARD, mcp_routes, mcp_session, result_json, token

from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec

pytestmark = pytest.mark.broker

PUBLISH = "publish_place-bet"


@pytest.fixture(scope="module")
async def names(kafka_bootstrap: str) -> dict[str, str]:
    names = {k: f"mcp-idem-{k}-{uuid.uuid4().hex[:8]}" for k in ("odds", "bets", "verified")}
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(
        settings,
        kafka_bootstrap,
        [TopicSpec(names["odds"], 2, 1, True), TopicSpec(names["bets"], 1)],
    )
    # A ledger of this module's own: other modules' bridges never decide its keys.
    names["ledger"] = f"mcp-ledger-{uuid.uuid4().hex[:8]}"
    return names


async def _bridge(kafka_bootstrap: str, names: dict[str, str], bet_schema, ledger: str = ""):
    routes = GUARD + mcp_routes(names["odds"], names["bets"], names["verified"], bet_schema)
    topic = ledger or names["ledger"]
    options = f'mcp_idempotency_topic = "{topic}"\nmcp_rate_per_s = 1000\nmcp_burst = 1000'
    return await start_bridge(routes, kafka_bootstrap, ["mcp"], http_options=options)


@pytest.fixture(scope="module")
async def pair(kafka_bootstrap: str, names, bet_schema):
    """Two instances sharing one ledger (as two bridges behind a load balancer)."""
    first = await _bridge(kafka_bootstrap, names, bet_schema)
    second = await _bridge(kafka_bootstrap, names, bet_schema)
    yield first, second
    await asyncio.gather(first.stop(), second.stop())


def url_of(bridge) -> str:
    return f"http://127.0.0.1:{bridge.web.port}/mcp"


def ledger_of(bridge):
    [frontend] = [f for f in bridge.frontends if f.name == "mcp"]
    return frontend.ledger


async def records_of(bootstrap: str, topic: str, match: str) -> list:
    return [
        r for r in await read_topic(bootstrap, topic) if json.loads(r.value)["matchId"] == match
    ]


async def test_a_retry_replays_the_first_result_and_writes_once(
    pair, names, kafka_bootstrap
) -> None:
    bridge, _ = pair
    match = f"m-{uuid.uuid4().hex[:6]}"
    bet = {"matchId": match, "team": "home", "amount": 5, "idempotency_key": "k-" + match}
    async with mcp_session(url_of(bridge), token(bridge.config, "alice", "bettor")) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert "idempotency_key" in tools[PUBLISH].input_schema["properties"]
        first = await session.call_tool(PUBLISH, bet)
        assert not first.is_error, first
        again = await session.call_tool(PUBLISH, dict(reversed(list(bet.items()))))
        other = await session.call_tool(PUBLISH, {**bet, "amount": 6})
        bad_key = await session.call_tool(PUBLISH, {**bet, "idempotency_key": "é"})
    assert "replayed" not in result_json(first)
    assert result_json(again) == {**result_json(first), "replayed": True}
    assert other.is_error and result_json(other)["error"] == "idempotency-key-reused"
    assert bad_key.is_error
    assert result_json(bad_key)["errors"][0]["pointer"] == "/idempotency_key"
    [record] = await records_of(kafka_bootstrap, names["bets"], match)
    assert record.offset == result_json(first)["offset"]
    assert b"idempotency_key" not in record.value  # the key is no member of the record


async def test_a_duplicate_while_the_first_is_in_flight_is_told_to_retry(
    pair, names, kafka_bootstrap
) -> None:
    bridge, _ = pair
    await ledger_of(bridge).ready()  # decided here, not by the other instance
    match = f"m-{uuid.uuid4().hex[:6]}"
    bet = {"matchId": match, "team": "away", "amount": 2, "idempotency_key": "f-" + match}
    bearer = token(bridge.config, "carol", "bettor")
    async with (
        mcp_session(url_of(bridge), bearer) as one,
        mcp_session(url_of(bridge), bearer) as two,
        mcp_session(url_of(bridge), bearer) as three,
    ):
        results = await asyncio.gather(*(s.call_tool(PUBLISH, bet) for s in (one, two, three)))
    documents = [result_json(r) for r in results]
    fresh = [d for d in documents if d.get("published") and not d.get("replayed")]
    busy = [d for d in documents if d.get("error") == "idempotency-in-flight"]
    assert len(fresh) == 1, documents
    assert len(fresh) + len(busy) + sum(1 for d in documents if d.get("replayed")) == 3
    assert busy, documents  # the claim is in memory before its write: the others see it
    assert "retry" in busy[0]["detail"]
    assert len(await records_of(kafka_bootstrap, names["bets"], match)) == 1


async def test_a_key_used_on_one_instance_replays_on_the_other(
    pair, names, kafka_bootstrap
) -> None:
    first, second = pair
    await asyncio.gather(ledger_of(first).ready(), ledger_of(second).ready())
    bearer = token(first.config, "dave", "bettor")
    match = f"m-{uuid.uuid4().hex[:6]}"
    keys = [f"x-{match}-{n}" for n in range(8)]
    bet = {"matchId": match, "team": "home", "amount": 1}
    async with (
        mcp_session(url_of(first), bearer) as on_a,
        mcp_session(url_of(second), bearer) as on_b,
    ):
        placed = [await on_a.call_tool(PUBLISH, {**bet, "idempotency_key": k}) for k in keys]
        retried = [await on_b.call_tool(PUBLISH, {**bet, "idempotency_key": k}) for k in keys]
    for one, two in zip(placed, retried, strict=True):
        assert not one.is_error and not two.is_error, (one, two)
        assert result_json(two) == {**result_json(one), "replayed": True}
    # Both instances decide some keys, so some calls were forwarded to the owner.
    owned = [ledger_of(b).store.tables.owned() for b in pair]
    assert all(owned), owned
    assert len(await records_of(kafka_bootstrap, names["bets"], match)) == len(keys)


async def test_a_key_replays_after_a_restart(names, kafka_bootstrap, bet_schema) -> None:
    match = f"m-{uuid.uuid4().hex[:6]}"
    bet = {"matchId": match, "team": "home", "amount": 9, "idempotency_key": "r-" + match}
    ledger = f"mcp-ledger-{uuid.uuid4().hex[:8]}"  # no other instance decides its keys
    before = await _bridge(kafka_bootstrap, names, bet_schema, ledger)
    try:
        async with mcp_session(url_of(before), token(before.config, "erin", "bettor")) as s:
            first = result_json(await s.call_tool(PUBLISH, bet))
    finally:
        await before.stop()
    after = await _bridge(kafka_bootstrap, names, bet_schema, ledger)
    try:
        async with mcp_session(url_of(after), token(after.config, "erin", "bettor")) as s:
            again = result_json(await s.call_tool(PUBLISH, bet))
    finally:
        await after.stop()
    assert again == {**first, "replayed": True}
    assert len(await records_of(kafka_bootstrap, names["bets"], match)) == 1
