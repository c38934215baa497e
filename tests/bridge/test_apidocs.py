"""AsyncAPI 3.0 and OpenAPI 3.1 generation: the documents validate against the official schemas,
describe what routing.toml says, and a running bridge serves them (and /docs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from bridge.apidocs.asyncapi import asyncapi_document
from bridge.apidocs.openapi import openapi_document
from bridge.model.config import Config, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
ASYNCAPI_SCHEMA = json.loads((REPO / "tests/data/asyncapi-3.0.0.json").read_text())

# Everything the generator has to cope with: no guard, a rest parameter, a route without a
# schema, HTTP bindings as a list, headers, a route with only Kafka-side headers.
VARIED = """
[kafka]
bootstrap = "kafka-1:9092,kafka-2:9092"

[kafka.topics.events]
partitions = 6
compact = true

[listeners.mqtt]
port = 1884

[listeners.http]
port = 8081

[[routes]]
name = "events"
topic = "events"
key = "{device}"
schema = "schemas/score.json"
headers = { "x-site" = "{site}" }

[routes.mqtt]
topic = "sites/{site}/devices/{device}"
max_qos = 1
retain = false

[routes.sse]
path = "/sites/{site}/devices/{device}"

[[routes.http]]
method = "PUT"
path = "/sites/{site}/devices/{device}"
idempotency = "optional"

[[routes.http]]
method = "GET"
path = "/devices/{device}/latest"

[[routes]]
name = "anything"
topic = "raw"
key = "{rest}"

[routes.mqtt]
topic = "raw/{rest...}"
"""


def shipped() -> Config:
    return load_config(REPO / "routing.toml")


def varied() -> Config:
    return parse_config(VARIED, REPO / "varied.toml", {})


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]


def dangling_refs(document: dict[str, Any]) -> list[str]:
    """Local $refs that point nowhere (the schema cannot check these)."""
    missing = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                target: Any = document
                for part in ref[2:].split("/"):
                    if not isinstance(target, dict) or part not in target:
                        missing.append(ref)
                        break
                    target = target[part]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return missing


@pytest.mark.parametrize("make", [shipped, varied], ids=["shipped", "varied"])
def test_asyncapi_validates_against_the_official_schema(make: Any) -> None:
    document = asyncapi_document(make())
    assert asyncapi_errors(document) == []
    assert dangling_refs(document) == []


def test_the_vendored_schema_really_checks_documents_and_bindings() -> None:
    # Guard against a schema that accepts anything: break a document three ways.
    for path, value in (
        (("asyncapi",), "2.6.0"),
        (("operations", "scores_mqtt_publish", "action"), "publish"),
        (("channels", "kafka_scores", "bindings", "kafka", "partitions"), "three"),
    ):
        document = asyncapi_document(shipped())
        node = document
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        assert asyncapi_errors(document), path


@pytest.mark.parametrize("make", [shipped, varied], ids=["shipped", "varied"])
def test_openapi_validates(make: Any) -> None:
    document = openapi_document(make())
    validate_openapi(document)
    assert dangling_refs(document) == []


def test_the_openapi_validator_really_checks() -> None:
    for breaks in (
        lambda d: d["paths"]["/matches/{match}"].pop("parameters"),  # undeclared {match}
        lambda d: d["paths"]["/bets"]["post"]["parameters"][0].update({"in": "body"}),
    ):
        document = openapi_document(shipped())
        breaks(document)
        with pytest.raises(OpenAPIValidationError):
            validate_openapi(document)


def test_asyncapi_describes_servers_channels_and_kafka_bindings() -> None:
    document = asyncapi_document(shipped(), kafka_bootstrap="127.0.0.1:9999")
    servers = document["servers"]
    assert {name: s["protocol"] for name, s in servers.items()} == {
        "mqtt": "mqtt",
        "http": "http",
        "kafka": "kafka",
    }
    assert servers["kafka"]["host"] == "127.0.0.1:9999"
    channels = document["channels"]
    scores = channels["scores_mqtt"]
    assert scores["address"] == "stadium/{match}/score"
    assert list(scores["parameters"]) == ["match"]
    odds_topic = channels["kafka_odds"]["bindings"]["kafka"]
    assert odds_topic["topicConfiguration"] == {"cleanup.policy": ["compact"]}
    assert odds_topic["partitions"] == 3
    message = document["components"]["messages"]["scores"]
    assert message["payload"] == {"$ref": "#/components/schemas/Score"}
    assert document["components"]["schemas"]["Score"]["required"] == [
        "match",
        "home",
        "away",
        "minute",
    ]
    assert message["bindings"]["kafka"]["key"]["x-edgebridge-template"] == "{match}"
    operations = document["operations"]
    assert operations["scores_mqtt_publish"]["action"] == "receive"
    assert operations["scores_mqtt_subscribe"]["action"] == "send"
    assert operations["scores_kafka_produce"]["channel"] == {"$ref": "#/channels/kafka_scores"}
    assert operations["scores_kafka_consume"]["action"] == "receive"
    # A read-only route never makes the bridge write to Kafka, a write-only one never read.
    assert "all-scores_kafka_produce" not in operations
    assert "all-scores_kafka_consume" in operations
    assert "place-bet_kafka_consume" not in operations
    assert document["components"]["securitySchemes"]["jwt"]["scheme"] == "bearer"


def test_asyncapi_marks_sse_as_http_with_extensions() -> None:
    document = asyncapi_document(shipped())
    channel = document["channels"]["matches_sse"]
    assert channel["servers"] == [{"$ref": "#/servers/http"}]
    assert channel["x-edgebridge-transport"] == "sse"
    assert channel["x-sse-event"] == "match" and channel["x-sse-start"] == "snapshot"
    assert "no official AsyncAPI binding" in channel["description"]
    assert document["operations"]["matches_sse_stream"]["bindings"]["http"]["method"] == "GET"


def test_asyncapi_describes_request_reply_and_headers() -> None:
    document = asyncapi_document(shipped())
    operation = document["operations"]["place-bet_http_post"]
    assert operation["action"] == "receive"
    assert operation["reply"]["channel"] == {"$ref": "#/channels/place-bet_reply"}
    headers = document["components"]["messages"]["place-bet"]["headers"]["properties"]
    assert {"correlation-id", "reply-to"} <= set(headers)
    assert "reply" in document["channels"]["kafka_bet-replies"]["messages"]


def test_asyncapi_handles_rest_parameters_headers_and_missing_schemas() -> None:
    document = asyncapi_document(varied())
    raw = document["channels"]["anything_mqtt"]
    assert raw["address"] == "raw/{rest}"
    assert "levels" in raw["parameters"]["rest"]["description"]
    assert document["components"]["messages"]["anything"]["payload"]["description"]
    headers = document["components"]["messages"]["events"]["headers"]["properties"]
    assert headers["x-site"]["x-edgebridge-template"] == "{site}"
    publish = document["operations"]["events_mqtt_publish"]["bindings"]["mqtt"]
    assert publish == {"qos": 1, "retain": False, "bindingVersion": "0.2.0"}
    assert document["servers"]["kafka"]["host"] == "kafka-1:9092"
    assert "securitySchemes" not in document["components"]


def test_openapi_describes_idempotency_prefer_errors_and_streams() -> None:
    document = openapi_document(shipped())
    post = document["paths"]["/bets"]["post"]
    headers = {p["name"]: p for p in post["parameters"]}
    assert headers["Idempotency-Key"]["required"] is True
    assert "Prefer" in headers
    assert {"202", "400", "409", "422", "503"} <= set(post["responses"])
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Bet"
    }
    assert post["security"] == [{"bearer": ["bettor"]}, {"accessToken": ["bettor"]}]
    stream = document["paths"]["/scores"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert "Last-Event-ID" in {p["name"] for p in stream["parameters"]}
    assert "security" not in stream  # anonymous
    fetch = document["paths"]["/matches/{match}"]["get"]
    assert "ETag" in fetch["responses"]["200"]["headers"]
    assert {"304", "If-None-Match"} <= set(fetch["responses"]) | {
        p["name"] for p in fetch["parameters"]
    }
    # A path that is both a fetch and a stream offers both representations on one GET.
    profile = document["paths"]["/users/{user}/profile"]["get"]
    assert {"application/json", "text/event-stream"} <= set(profile["responses"]["200"]["content"])
    assert "/_edgebridge/replies/{route}/{correlation}" in document["paths"]


def test_openapi_optional_idempotency_and_no_reply() -> None:
    put = openapi_document(varied())["paths"]["/sites/{site}/devices/{device}"]["put"]
    assert {p["name"]: p["required"] for p in put["parameters"]}["Idempotency-Key"] is False
    assert "2XX" not in put["responses"] and "202" in put["responses"]


@pytest.mark.parametrize("command", ["asyncapi", "openapi"])
def test_cli_prints_the_documents(command: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.process.cli",
            command,
            "--config",
            str(REPO / "routing.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    document = json.loads(result.stdout)
    if command == "asyncapi":
        assert asyncapi_errors(document) == []
    else:
        validate_openapi(document)


ROUTES = """
[[routes]]
name = "scores"
topic = "{topic}"
key = "{{match}}"
schema = "schemas/score.json"

[routes.sse]
path = "/matches/{{match}}/scores"
"""


async def test_a_running_bridge_serves_the_documents_and_the_page(
    bridge_factory: Any, new_topic: Any
) -> None:
    topic = await new_topic()
    bridge: Any = await bridge_factory(ROUTES.format(topic=topic), frontends=["docs", "sse"])
    base = f"http://127.0.0.1:{bridge.web.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        asyncapi = await client.get("/asyncapi.json")
        openapi = await client.get("/openapi.json")
        page = await client.get("/docs")
        post = await client.post("/docs")
    assert asyncapi.status_code == 200 and asyncapi.headers["content-type"] == "application/json"
    document = asyncapi.json()
    assert asyncapi_errors(document) == []
    # Public pages keep the cluster's address private ([bridge] docs_show_kafka shows it).
    assert document["servers"]["kafka"]["host"] == "internal"
    assert bridge.bootstrap not in asyncapi.text and bridge.bootstrap not in page.text
    validate_openapi(openapi.json())
    assert "/matches/{match}/scores" in openapi.json()["paths"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "place-bet" not in page.text and "/matches/{match}/scores" in page.text
    assert 'href="/asyncapi.json"' in page.text
    assert post.status_code == 405


async def test_a_route_on_a_docs_path_wins_over_the_docs_page(
    bridge_factory: Any, new_topic: Any
) -> None:
    topic = await new_topic()
    routes = ROUTES.format(topic=topic).replace("/matches/{match}/scores", "/docs")
    bridge: Any = await bridge_factory(routes, frontends=["docs", "sse"])
    base = f"http://127.0.0.1:{bridge.web.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.get("/asyncapi.json")).status_code == 200  # no route matches it
        async with client.stream("GET", "/docs") as response:
            assert response.headers["content-type"].startswith("text/event-stream")


# -- any valid routing.toml gives valid documents ---------------------------------------------

ROLES = st.lists(st.sampled_from(["anonymous", "authenticated", "bettor", "admin"]), max_size=2)


@st.composite
def route_toml(draw: st.DrawFn, index: int) -> str:
    levels = draw(st.lists(st.sampled_from(["a", "b", "{p}", "{q}"]), min_size=1, max_size=3))
    levels = list(dict.fromkeys(levels))  # a parameter appears once
    rest = draw(st.booleans())
    if rest:
        levels.append("{tail...}")
    params = [level.strip("{}.") for level in levels if level.startswith("{")]
    lines = [
        "[[routes]]",
        f'name = "r{index}"',
        f'topic = "{draw(st.sampled_from(["t1", "t2", "t3"]))}"',
    ]
    if params:
        lines.append('key = "' + "-".join(f"{{{p}}}" for p in params) + '"')
    if draw(st.booleans()):
        lines.append('schema = "schemas/bet.json"')
    if draw(st.booleans()):
        lines.append('headers = { "x-origin" = "edge" }')
    address = "/".join(levels)
    kinds = draw(st.sets(st.sampled_from(["mqtt", "sse", "get", "post"]), min_size=1))
    if "mqtt" in kinds:
        lines += ["[routes.mqtt]", f'topic = "m{index}/{address}"']
        lines.append(f"max_qos = {draw(st.sampled_from([0, 1, 2]))}")
    if "sse" in kinds:
        lines += ["[routes.sse]", f'path = "/s{index}/{address}"']
        lines.append(f'start = "{draw(st.sampled_from(["live", "snapshot", "earliest"]))}"')
    for method in ("get", "post"):
        if method in kinds:
            lines += ["[[routes.http]]", f'method = "{method.upper()}"']
            lines.append(f'path = "/h{index}{method}/{address}"')
            if method == "post":
                lines.append(
                    f'idempotency = "{draw(st.sampled_from(["required", "optional", "off"]))}"'
                )
                if draw(st.booleans()):
                    lines.append('reply_topic = "replies"')
    access = {"publish": draw(ROLES), "subscribe": draw(ROLES)}
    lines.append("[routes.access]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in access.items() if v]
    return "\n".join(lines)


@st.composite
def configs(draw: st.DrawFn) -> str:
    routes = [draw(route_toml(i)) for i in range(draw(st.integers(1, 4)))]
    guard = '[guard]\nsecret = "s3cret-s3cret-s3cret-s3cret"\n' if draw(st.booleans()) else ""
    return guard + "\n\n".join(routes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_any_valid_routing_gives_valid_documents(text: str) -> None:
    config = parse_config(text, REPO / "generated.toml", {})  # the generator makes valid ones
    asyncapi = asyncapi_document(config)
    assert asyncapi_errors(asyncapi) == [], text
    assert dangling_refs(asyncapi) == [], text
    openapi = openapi_document(config)
    validate_openapi(openapi)
    assert dangling_refs(openapi) == [], text


def test_the_kafka_address_is_shown_only_when_asked() -> None:
    config = load_config(REPO / "routing.toml", {"EDGEBRIDGE_JWT_SECRET": "s" * 32})
    public = asyncapi_document(config, "kafka-1.internal:9092", show_kafka_address=False)
    assert public["servers"]["kafka"]["host"] == "internal"
    assert "kafka-1.internal" not in json.dumps(public)
    operator = asyncapi_document(config, "kafka-1.internal:9092")
    assert operator["servers"]["kafka"]["host"] == "kafka-1.internal:9092"
