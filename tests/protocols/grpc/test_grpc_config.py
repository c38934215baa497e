"""``[listeners.grpc]`` and ``[routes.grpc]`` in routing.toml: built, and refused at their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.model.config import ConfigError, parse_config

CONFIG = """
[listeners.grpc]
port = 50555
max_queued = 64

[[routes]]
name = "odds"
topic = "odds"
key = "{match}"

[routes.grpc]
start = "live"

[[routes]]
name = "profile"
topic = "profiles"
key = "{user}"

[routes.grpc]
reply_topic = "profile-replies"

[routes.access]
identity = "user"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("r.toml"), {})
    return [str(p) for p in caught.value.problems]


def test_grpc_listener_and_routes_are_built() -> None:
    config = parse_config(CONFIG, Path("r.toml"), {})
    assert config.grpc_listener is not None
    assert (config.grpc_listener.port, config.grpc_listener.options["max_queued"]) == (50555, 64)
    by_name = {r.name: r for r in config.routes}
    assert by_name["odds"].grpc == {"start": "live"}
    # identity = "user" is a parameter a gRPC caller names: accepted for a gRPC-only route.
    assert by_name["profile"].grpc == {"reply_topic": "profile-replies"}


def test_no_grpc_listener_unless_configured() -> None:
    text = CONFIG.replace("[listeners.grpc]\nport = 50555\nmax_queued = 64\n", "")
    assert parse_config(text, Path("r.toml"), {}).grpc_listener is None


def test_bad_grpc_settings_are_refused_at_their_lines() -> None:
    text = (
        CONFIG.replace("max_queued = 64", "max_queued = 0\nmax_que = 3")
        .replace('start = "live"', 'start = "latest"')
        .replace('reply_topic = "profile-replies"', 'reply_topic = "profile replies"')
    )
    found = problems(text)
    assert found[0].startswith("r.toml:4: listeners.grpc.max_queued:")
    assert found[1].startswith("r.toml:5: listeners.grpc.max_que: unknown field")
    assert found[2].startswith("r.toml:13: routes[0].grpc.start:") and "'latest'" in found[2]
    assert found[3].startswith("r.toml:21: routes[1].grpc.reply_topic:")
    assert len(found) == 4


def test_asyncapi_lists_the_grpc_methods_per_route_and_stays_valid() -> None:
    import json

    import jsonschema

    from bridge.apidocs.asyncapi import asyncapi_document
    from bridge.process.cli import format_route_table

    repo = Path(__file__).resolve().parents[3]
    config = parse_config(CONFIG, repo / "r.toml", {})
    document = asyncapi_document(config)
    schema = json.loads((repo / "tests/data/asyncapi-3.0.0.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(document))
    assert errors == []
    assert document["servers"]["grpc"]["protocol"] == "grpc"
    methods = {
        name: op["x-grpc-method"]
        for name, op in document["operations"].items()
        if op.get("x-edgebridge-transport") == "grpc"
    }
    assert methods == {
        "odds_grpc_produce": "/edgebridge.v1.Bridge/Produce",
        "odds_grpc_subscribe": "/edgebridge.v1.Bridge/Subscribe",
        "profile_grpc_produce": "/edgebridge.v1.Bridge/Produce",
        "profile_grpc_subscribe": "/edgebridge.v1.Bridge/Subscribe",
        "profile_grpc_request": "/edgebridge.v1.Bridge/Request",
    }
    assert document["channels"]["profile_grpc"]["x-grpc-params"] == ["user"]
    # `edgebridge check` prints which routes gRPC reaches.
    table = format_route_table(config)
    assert "grpc" in table.splitlines()[0] and "route=odds" in table


ODDS_PROTO = """syntax = "proto3";
package odds.v1;
import "google/protobuf/empty.proto";

message OddsUpdate { string match = 1; double home = 2; double away = 3; }
message Ack { string topic = 1; int64 offset = 2; }

service Odds {
  rpc Publish(OddsUpdate) returns (Ack);
  rpc Watch(google.protobuf.Empty) returns (stream OddsUpdate);
}
"""

BOUND = """
[[routes]]
name = "odds"
topic = "odds"
key = "{match}"

[routes.grpc]
proto = "odds.proto"
produce = "/odds.v1.Odds/Publish"
"""


def test_a_proto_binding_is_compiled_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "odds.proto").write_text(ODDS_PROTO)
    config = parse_config(BOUND, tmp_path / "r.toml", {})
    binding = config.routes[0].grpc_produce
    assert binding is not None
    assert (binding.path, binding.input_type, binding.output_type) == (
        "/odds.v1.Odds/Publish",
        "odds.v1.OddsUpdate",
        "odds.v1.Ack",
    )


@pytest.mark.parametrize(
    ("proto", "method", "expected"),
    [
        # protoc's own error, at the .proto's line, reported at the `proto` line of routing.toml
        (
            ODDS_PROTO.replace("double home", "doubel home"),
            "/odds.v1.Odds/Publish",
            'r.toml:8: routes[0].grpc.proto: odds.proto:5:40: "doubel" is not defined.',
        ),
        (
            ODDS_PROTO,
            "/odds.v1.Odds/Place",
            "r.toml:9: routes[0].grpc.produce: service odds.v1.Odds has no method Place "
            "(it has: Publish, Watch)",
        ),
        (
            ODDS_PROTO,
            "/odds.v1.Bets/Publish",
            "r.toml:9: routes[0].grpc.produce: odds.proto has no service odds.v1.Bets "
            "(it has: odds.v1.Odds)",
        ),
        (
            ODDS_PROTO,
            "/odds.v1.Odds/Watch",
            "r.toml:9: routes[0].grpc.produce: /odds.v1.Odds/Watch is server-streaming; "
            "this binding needs a unary method",
        ),
    ],
)
def test_a_bad_proto_binding_is_refused_at_its_line(
    tmp_path: Path, proto: str, method: str, expected: str
) -> None:
    (tmp_path / "odds.proto").write_text(proto)
    text = BOUND.replace("/odds.v1.Odds/Publish", method)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "r.toml", {})
    assert [str(p).replace(str(tmp_path) + "/", "") for p in caught.value.problems] == [expected]


def test_a_missing_proto_file_and_a_method_without_proto(tmp_path: Path) -> None:
    found = problems(BOUND.replace('proto = "odds.proto"\n', ""))
    assert len(found) == 1 and "routes[0].grpc" in found[0] and "proto" in found[0]
    with pytest.raises(ConfigError) as caught:
        parse_config(BOUND, tmp_path / "r.toml", {})
    assert [str(p).replace(str(tmp_path) + "/", "") for p in caught.value.problems] == [
        "r.toml:8: routes[0].grpc.proto: cannot read odds.proto"
    ]
