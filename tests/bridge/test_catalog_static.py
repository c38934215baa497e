"""The data-product catalog without a broker: routing.toml's product fields and their errors at
their lines, `edgebridge catalog` for the shipped routing.toml, the same entries in the API
documents (MCP tools and gRPC methods per product), and the per-second activity counter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bridge.apidocs.asyncapi import asyncapi_document
from bridge.apidocs.docs_page import docs_html
from bridge.apidocs.openapi import openapi_document
from bridge.model.config import load_config
from bridge.telemetry.activity import WINDOW_S, TopicActivity

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.process.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


BAD_PRODUCT = """\
[[routes]]
name = "odds"
topic = "odds"
owner = " trading"
version = "2.1"
tags = ["odds", "In-Play"]
description = 5

[routes.sse]
path = "/odds"

[[routes]]
name = "scores"
topic = "scores"
tags = ["scores", "scores"]
version = "1.0.0-rc.1"

[routes.sse]
path = "/scores"
"""


def test_check_reports_bad_catalog_fields_at_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "routing.toml"
    path.write_text(BAD_PRODUCT)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    lines = [line.strip().replace(str(tmp_path), "DIR") for line in result.stderr.splitlines()]
    assert lines == [
        "DIR/routing.toml is not valid:",
        "DIR/routing.toml:4: routes[0].owner: ' trading': an owner is a team or an address: "
        "1 to 128 characters, not starting or ending with a space",
        "DIR/routing.toml:5: routes[0].version: '2.1': a version is MAJOR.MINOR.PATCH "
        "(semantic versioning), e.g. 2.1.0",
        "DIR/routing.toml:6: routes[0].tags[1]: 'In-Play': a tag is lower case letters, "
        "digits, '.', '_' or '-' (up to 40), starting with a letter or digit",
        "DIR/routing.toml:7: routes[0].description: 5 is not of type 'string'",
        "DIR/routing.toml:15: routes[1].tags: ['scores', 'scores'] has non-unique elements",
    ]


def test_catalog_command_lists_the_shipped_products() -> None:
    """`edgebridge catalog` on the shipped routing.toml: one row per route with its version,
    owner, tags, roles and regions, then its addresses per protocol (MCP tools, gRPC methods)."""
    result = run_cli("catalog", "--config", "routing.toml")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].split() == [
        "product", "version", "owner", "tags", "read", "by", "written", "by", "regions"
    ]  # fmt: skip
    config = load_config(REPO / "routing.toml")
    rows = {line.split()[0]: line for line in out[2:] if not line.startswith(" ")}
    assert list(rows) == [route.name for route in config.routes]
    for route in config.routes:
        cells = rows[route.name].split()
        assert route.product.version is not None and route.product.owner is not None
        assert cells[1:4] == [
            route.product.version,
            route.product.owner,
            ",".join(route.product.tags),
        ]
    assert rows["in-play-gb"].rstrip().endswith("read gb")
    assert rows["place-bet"].split()[4:6] == ["-", "bettor"]  # nobody reads bets back
    block = out[out.index(rows["partner-odds"]) + 1 : out.index(rows["place-bet"])]
    assert "  kafka  partner-odds (key {match})" in block
    assert "  sse    /partner-odds" in block
    assert "  grpc   /edgebridge.v1.Bridge/Produce, /edgebridge.v1.Bridge/Subscribe" in block
    # Written over gRPC only: MCP opens no write path onto it (bridge/model/products.py).
    assert "  mcp    read_partner-odds, read_latest_partner-odds" in block


def test_catalog_command_json_is_the_documents_entry() -> None:
    result = run_cli("catalog", "--config", "routing.toml", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    config = load_config(REPO / "routing.toml")
    assert document["products"] == asyncapi_document(config)["x-edgebridge-catalog"]
    assert document["products"] == openapi_document(config)["x-edgebridge-catalog"]
    scores = document["products"][0]
    assert scores["name"] == "scores" and scores["schema"] == "schemas/score.json"
    assert scores["addresses"] == {
        "mqtt": ["stadium/{match}/score"],
        "sse": ["/matches/{match}/scores"],
        "mcp": ["read_scores", "publish_scores"],
    }
    assert scores["access"] == {"publish": ["scoreboard"], "subscribe": ["anonymous"]}
    in_play = next(p for p in document["products"] if p["name"] == "in-play-gb")
    assert in_play["jurisdiction"] == {
        "publish": ["*"],
        "read": ["gb"],
        "local": False,
        "exceptions": [{"role": "regulator", "read": ["*"]}],
    }


def test_a_bound_proto_method_is_listed_with_the_product(tmp_path: Path) -> None:
    """A route's own .proto method (``[routes.grpc] produce``) is one of its gRPC doors."""
    (tmp_path / "odds.proto").write_text(
        'syntax = "proto3";\npackage odds.v1;\n'
        "message Price { string match = 1; double home = 2; }\n"
        "message Ack {}\nservice Odds { rpc Publish(Price) returns (Ack); }\n"
    )
    (tmp_path / "routing.toml").write_text(
        '[listeners.grpc]\nport = 0\n\n[[routes]]\nname = "odds"\ntopic = "odds"\n'
        'key = "{match}"\nversion = "3.0.0"\n\n[routes.grpc]\nproto = "odds.proto"\n'
        'produce = "/odds.v1.Odds/Publish"\nreply_topic = "odds-replies"\n'
    )
    config = load_config(tmp_path / "routing.toml")
    doc = asyncapi_document(config)
    (product,) = doc["x-edgebridge-catalog"]
    assert product["addresses"]["grpc"] == [
        "/edgebridge.v1.Bridge/Produce",
        "/edgebridge.v1.Bridge/Subscribe",
        "/edgebridge.v1.Bridge/Request",
        "/odds.v1.Odds/Publish",
    ]
    methods = {op.get("x-grpc-method") for op in doc["operations"].values()}
    assert "/odds.v1.Odds/Publish" in methods  # the AsyncAPI operations list the same


def test_docs_page_shows_the_catalog() -> None:
    config = load_config(REPO / "routing.toml")
    page = docs_html(asyncapi_document(config), openapi_document(config))
    assert "<h2 id=catalog>Data products</h2>" in page
    for route in config.routes:
        assert f"id=product-{route.name} " in page
    assert "<code>/edgebridge.v1.Bridge/Produce</code>" in page


def test_activity_counts_the_last_minute_by_record_timestamp() -> None:
    activity = TopicActivity()
    now = 1_000_000.0
    for age_s in (0.2, 0.5, 10, 58.5, 61, 3600):  # two are older than the window
        activity.note(int((now - age_s) * 1000))
    activity.note(None)  # no timestamp: counted as seen, not in the rate
    assert activity.total == 7
    assert activity.last_ms == int((now - 0.2) * 1000)
    assert activity.per_second(now) == 4 / WINDOW_S
    # A minute on, they have all left the window; records of the new second count again.
    later = now + WINDOW_S
    assert activity.per_second(later) == 0
    activity.note(int(later * 1000))
    assert activity.per_second(later) == 1 / WINDOW_S
    # A record older than what its bucket holds now does not push the newer second out.
    activity.note(int((later - WINDOW_S) * 1000))
    assert activity.per_second(later) == 1 / WINDOW_S


def test_mcp_products_carry_the_catalog_fields() -> None:
    """An agent's list_products/describe_product say what an app's catalog says."""
    from protocols.mcp.catalogue import product_summary

    config = load_config(REPO / "routing.toml")
    odds = next(route for route in config.routes if route.name == "odds")
    summary = product_summary(config, odds)
    assert summary["description"] == odds.product.description
    assert summary["owner"] == "trading-desk"
    assert summary["version"] == "2.1.0"
    assert summary["tags"] == ["odds", "pricing"]


def test_api_documents_describe_each_product_where_it_is_used() -> None:
    """AsyncAPI messages and OpenAPI operations carry the product's description, tags, owner
    and version (the documents stay valid: tests/bridge/test_apidocs.py)."""
    config = load_config(REPO / "routing.toml")
    message = asyncapi_document(config)["components"]["messages"]["odds"]
    assert message["description"].startswith("Home/away decimal odds per match")
    assert message["tags"] == [{"name": "odds"}, {"name": "pricing"}]
    assert message["x-edgebridge-product"] == {"owner": "trading-desk", "version": "2.1.0"}
    openapi = openapi_document(config)
    assert openapi["paths"]["/bets"]["post"]["tags"] == ["place-bet"]
    tags = {tag["name"]: tag["description"] for tag in openapi["tags"]}
    assert tags["place-bet"].endswith("Owner: betting-core. Version 1.1.0.")
    assert "mqtt-any" not in tags  # MQTT only: no HTTP operation to tag
