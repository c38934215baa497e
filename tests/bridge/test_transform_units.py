"""Broker-free checks of the transform engine (bridge/edge/transform.py): the fields handed to
CEL, the encoding of results, and outbound views, against the CEL interpreter itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import REPO

from bridge.edge.access import Principal
from bridge.edge.transform import Caller, TransformFailed, _encode, _evaluate, projector_for
from bridge.model.config import parse_config
from bridge.model.message import Message
from bridge.model.transforms import Expression, _body_fields

DOCS: list[dict[str, Any]] = [
    {"x": 1.5, "y": "two", "z": {"k": [1, 2]}, "n": None},
    {"x": 2.0, "y": "", "z": {}},
    {"y": "only y", "extra": list(range(5))},
]
EXPRESSIONS = [
    '{"a": body.x, "b": body.y}',
    "has(body.x) ? body.x * 2.0 : -1.0",
    '"x" in body ? "has x" : "no x"',
    "size(body)",
    "body.z",
    '{"s": "body.extra is not read", "y": body.y}',
    'body.y + "!" // body.extra in a comment',
]


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_trimming_body_to_the_fields_read_never_changes_a_result(source: str) -> None:
    expression = Expression.compile(source)
    whole = Expression(expression.source, expression.program, expression.reads, None)
    for doc in DOCS:
        outcomes = []
        for compiled in (expression, whole):
            try:
                outcomes.append(("ok", _evaluate("r", compiled, doc, Caller())))
            except TransformFailed as exc:
                outcomes.append(("failed", exc.detail))
        assert outcomes[0] == outcomes[1], (source, doc)


def test_which_fields_an_expression_reads() -> None:
    assert _body_fields('{"a": body.x, "b": body . y + 1.0}') == {"x", "y"}
    assert _body_fields('has(body.x) ? body.x.deep : "body.z"') == {"x"}
    assert _body_fields('"x" in body') is None
    assert _body_fields('body["x"]') is None
    assert _body_fields("size(body)") is None
    assert _body_fields("somebody.x + body.k // body") == {"k"}


def test_a_result_json_cannot_carry_is_refused_with_where() -> None:
    with pytest.raises(TransformFailed, match="not finite at /a/1"):
        _encode("r", {"a": [1.0, float("inf")]})
    assert json.loads(_encode("r", {"a": "é", "b": [1, None]})) == {"a": "é", "b": [1, None]}


def test_a_view_is_the_first_naming_a_role_and_is_shared_when_it_reads_no_caller() -> None:
    config = parse_config(
        """
[[routes]]
name = "r"
topic = "t"
key = "{id}"
[routes.mqtt]
topic = "r/{id}"
[[routes.transform.outbound]]
roles = ["vip"]
[[routes.transform.outbound]]
roles = ["anonymous"]
remove = ["/secret", "/list/0"]
mask = ["/who", "/missing/field"]
[[routes.transform.outbound]]
roles = ["never-reached"]
expression = '{"id": identity}'
""",
        REPO / "routing.toml",
        {},
    )
    route = config.routes[0]
    assert projector_for(route, Principal("v", frozenset({"vip"}))) is None  # the whole record
    anyone = projector_for(route, Principal(None))
    assert anyone is not None and anyone is projector_for(route, Principal("x"))
    record = Message("t", b"1", b'{"secret": 1, "who": "bob", "list": [0, 1], "ok": true}')
    seen = anyone(record)
    assert seen is not None and json.loads(seen.value or b"") == {
        "who": "***",
        "list": [1],
        "ok": True,
    }
    assert anyone(record) is seen  # once per record, however many readers
    assert anyone(Message("t", b"1", b"not json")) is None  # withheld, never whole
    assert anyone(Message("t", b"1", None)).value is None  # a tombstone passes


def test_the_shipped_transformed_route_documents_both_of_its_shapes() -> None:
    """AsyncAPI: OddsCo's MQTT publish carries the source message (schemas/oddsco-price.json),
    its subscribers the canonical record; the catalog names both schemas and the version."""
    from bridge.apidocs.asyncapi import asyncapi_document
    from bridge.model.config import load_config
    from bridge.model.products import product_entry

    config = load_config(REPO / "routing.toml")
    route = next(r for r in config.routes if r.name == "odds-oddsco")
    doc = asyncapi_document(config)
    publish = doc["operations"]["odds-oddsco_mqtt_publish"]["messages"][0]["$ref"]
    subscribe = doc["operations"]["odds-oddsco_mqtt_subscribe"]["messages"][0]["$ref"]
    assert publish.endswith("/odds-oddsco_source") and subscribe.endswith("/odds-oddsco")
    source = doc["components"]["messages"]["odds-oddsco_source"]["payload"]["$ref"]
    assert doc["components"]["schemas"][source.rsplit("/", 1)[1]]["required"] == [
        "fixture_id", "home_pct", "away_pct", "clock_s", "ts_ms"
    ]  # fmt: skip
    entry = product_entry(config, route)
    assert entry["schema"] == "schemas/odds.json"
    assert entry["transform"] == {"version": "1.0.0", "source_schema": "schemas/oddsco-price.json"}


def test_openapi_asks_a_transformed_produce_route_for_its_source_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bridge.apidocs.openapi import openapi_document

    (tmp_path / "src.json").write_text('{"title": "Provider price", "type": "object"}')
    (tmp_path / "canon.json").write_text('{"title": "Odds record", "type": "object"}')
    config = parse_config(
        """
[[routes]]
name = "prov"
topic = "t"
schema = "canon.json"
[routes.http]
method = "POST"
path = "/prices"
[routes.transform]
source_schema = "src.json"
inbound = '{"k": body.x}'
""",
        tmp_path / "routing.toml",
        {},
    )
    doc = openapi_document(config)
    body = doc["paths"]["/prices"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/Provider_price"}
