"""The MCP front-end's pure parts, without a broker: the catalogue of tools per caller, the rate
limiter, and resource URIs. (MCP positions are SSE ids by construction: both come from
bridge/model/route_selection.py, tested in tests/bridge/test_route_selection.py.)"""

from __future__ import annotations

from pathlib import Path

from mcp_support import GUARD, mcp_routes

from bridge.edge.access import ANONYMOUS, Principal
from bridge.model.config import parse_config
from protocols.mcp.catalogue import tools_for
from protocols.mcp.operations import RateLimiter, _non_finite
from protocols.mcp.resources import parse_uri, product_uri, schema_uri


def config(schema: Path):
    text = GUARD + mcp_routes("odds-t", "bets-t", "verified-t", schema)
    return parse_config(text, schema.parent / "routing.toml", {})


def test_tools_follow_roles_and_identity(bet_schema: Path) -> None:
    loaded = config(bet_schema)
    bettor = Principal("alice", frozenset({"bettor"}))
    names = {t.name for t in tools_for(loaded, loaded.routes, bettor)}
    assert "publish_place-bet" in names and "publish_odds" not in names
    # Anonymous callers see no route that needs a token, and no identity-bound route.
    anonymous = {t.name for t in tools_for(loaded, loaded.routes, ANONYMOUS)}
    assert anonymous == {"list_products", "describe_product"}


def test_a_publish_tool_takes_the_route_schema_as_its_input(bet_schema: Path) -> None:
    loaded = config(bet_schema)
    bettor = Principal("alice", frozenset({"bettor"}))
    [publish] = [t for t in tools_for(loaded, loaded.routes, bettor) if t.kind == "publish"]
    assert publish.input_schema["required"] == ["matchId", "team", "amount"]
    engine = Principal("e", frozenset({"odds-engine"}))
    [odds] = [t for t in tools_for(loaded, loaded.routes, engine) if t.kind == "publish"]
    assert odds.wrapped and odds.input_schema["required"] == ["match", "value"]


def test_the_rate_limit_is_a_bucket_per_caller() -> None:
    limiter = RateLimiter(rate=2.0, burst=2)
    assert limiter.take("a", now=0.0) == 0 and limiter.take("a", now=0.0) == 0
    assert limiter.take("a", now=0.0) == 0.5  # the third call at once waits half a second
    assert limiter.take("b", now=0.0) == 0  # another caller has its own bucket
    assert limiter.take("a", now=0.5) == 0


def test_resource_uris_round_trip() -> None:
    assert parse_uri(product_uri("odds")) == ("odds", False)
    assert parse_uri(schema_uri("place-bet")) == ("place-bet", True)
    assert parse_uri("edgebridge://products/") is None
    assert parse_uri("file:///etc/passwd") is None


def test_non_finite_numbers_are_found_with_their_pointer() -> None:
    assert _non_finite({"a": [1, {"b/c": float("nan")}]}, "/value") == "/value/a/1/b~1c"
    assert _non_finite({"a": 1.5}, "") is None


def test_the_api_documents_list_exactly_the_tools_the_front_end_serves(bet_schema: Path) -> None:
    from bridge.apidocs.asyncapi import asyncapi_document
    from bridge.apidocs.openapi import openapi_document

    loaded = config(bet_schema)
    served = {
        t.name
        for roles in (("bettor",), ("odds-engine",))
        for t in tools_for(loaded, loaded.routes, Principal("x", frozenset(roles)))
        if t.route is not None
    }
    for document in (openapi_document(loaded), asyncapi_document(loaded)):
        listed = document["x-edgebridge-mcp"]["tools"]
        assert {t["name"] for t in listed} == served
        [bet] = [t for t in listed if t["name"] == "publish_place-bet"]
        assert bet["roles"] == ["bettor"]


def test_read_latest_takes_only_its_key_parameters(bet_schema: Path) -> None:
    import pytest

    from protocols.mcp.operations import ToolFailure, _check_arguments

    loaded = config(bet_schema)
    tools = tools_for(loaded, loaded.routes, Principal("a", frozenset({"bettor"})))
    [latest] = [t for t in tools if t.kind == "read_latest"]
    with pytest.raises(ToolFailure) as refused:
        _check_arguments(latest, {"match": "m1", "limit": 5})
    assert refused.value.errors == [{"pointer": "/limit", "detail": "unknown argument"}]
    [read] = [t for t in tools if t.name == "read_odds"]
    _check_arguments(read, {"match": "m1", "limit": 5})  # a read takes limit and position


def test_nothing_an_agent_sees_names_a_kafka_topic(bet_schema: Path) -> None:
    import json as json_module

    from protocols.mcp.catalogue import product_summary

    loaded = config(bet_schema)
    principal = Principal("a", frozenset({"bettor", "odds-engine"}))
    seen = json_module.dumps(
        [
            [t.name, t.description, t.input_schema]
            for t in tools_for(loaded, loaded.routes, principal)
        ]
        + [product_summary(loaded, route) for route in loaded.routes]
    )
    for topic in ("odds-t", "bets-t", "verified-t"):
        assert topic not in seen


def test_a_publish_tool_takes_an_idempotency_key_as_its_routes_http_post_does(
    bet_schema: Path,
) -> None:
    import pytest

    from protocols.mcp.operations import ToolFailure, _idempotency_key

    text = (GUARD + mcp_routes("odds-t", "bets-t", "verified-t", bet_schema)).replace(
        'idempotency = "optional"', 'idempotency = "required"'
    )
    loaded = parse_config(text, bet_schema.parent / "routing.toml", {})
    bettor = Principal("alice", frozenset({"bettor"}))
    [bet] = [t for t in tools_for(loaded, loaded.routes, bettor) if t.kind == "publish"]
    assert bet.idempotency == "required" and not bet.wrapped
    assert bet.input_schema["required"] == ["matchId", "team", "amount", "idempotency_key"]
    assert bet.input_schema["properties"]["idempotency_key"]["maxLength"] == 255
    record = {"matchId": "m", "team": "home", "amount": 1}
    with pytest.raises(ToolFailure) as missing:
        _idempotency_key(bet, record)
    assert missing.value.errors == [{"pointer": "/idempotency_key", "detail": "required"}]
    key, rest = _idempotency_key(bet, {**record, "idempotency_key": "k-1"})
    assert key == "k-1" and rest == record  # the key is no member of the record
    # A route written only over MQTT has no idempotency: no key in its tool's schema.
    engine = Principal("e", frozenset({"odds-engine"}))
    [odds] = [t for t in tools_for(loaded, loaded.routes, engine) if t.kind == "publish"]
    assert odds.idempotency == "off"
    assert "idempotency_key" not in odds.input_schema["properties"]
