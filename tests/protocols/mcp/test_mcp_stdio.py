"""``edgebridge mcp`` over stdio, as a desktop MCP host runs it: the SDK's stdio client starts the
command with a token in its environment, against the embedded broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from harness import REPO, config_text
from kafka_read import read_topic
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_support import GUARD, kafka_producer, mcp_routes, result_json, token

from bridge.model.config import parse_config

pytestmark = pytest.mark.broker


@pytest.fixture
def routing_file(tmp_path, bet_schema, kafka_bootstrap):
    names = {k: f"mcp-stdio-{k}-{uuid.uuid4().hex[:8]}" for k in ("odds", "bets", "verified")}
    path = tmp_path / "routing.toml"
    path.write_text(
        config_text(GUARD + mcp_routes(names["odds"], names["bets"], names["verified"], bet_schema))
    )
    config = parse_config(path.read_text(), path, {"KAFKA_BOOTSTRAP": kafka_bootstrap})
    return path, names, config


def command(path, bootstrap: str, bearer: str | None) -> StdioServerParameters:
    env = {"KAFKA_BOOTSTRAP": bootstrap}
    if bearer is not None:
        env["EDGEBRIDGE_TOKEN"] = bearer
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "bridge.process.cli", "mcp", "--config", str(path)],
        env=env,
        cwd=str(REPO),
    )


async def test_a_desktop_host_lists_its_tools_publishes_and_reads(
    routing_file, kafka_bootstrap
) -> None:
    path, names, config = routing_file
    match = f"s-{uuid.uuid4().hex[:6]}"
    async with kafka_producer(kafka_bootstrap) as producer:
        await producer.send_and_wait(names["odds"], b'{"home": 1.9}', key=match.encode())
    params = command(path, kafka_bootstrap, token(config, "alice", "bettor"))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name for t in (await session.list_tools()).tools}
        assert "publish_place-bet" in tools and "publish_odds" not in tools
        latest = result_json(await session.call_tool("read_latest_odds", {"match": match}))
        assert latest["value"] == {"home": 1.9}
        forbidden = await session.call_tool("publish_odds", {"match": match, "value": {}})
        assert forbidden.is_error and result_json(forbidden)["error"] == "unknown-tool"
        placed = await session.call_tool(
            "publish_place-bet", {"matchId": match, "team": "home", "amount": 3}
        )
        assert not placed.is_error, placed
    [record] = await read_topic(kafka_bootstrap, names["bets"])
    assert record.key == b"alice"
    assert json.loads(record.value)["matchId"] == match
    # The forbidden publish produced nothing: the odds topic holds only the record we wrote.
    assert len(await read_topic(kafka_bootstrap, names["odds"])) == 1


def test_a_refused_token_stops_the_command_with_a_clear_message(routing_file) -> None:
    path, _, _ = routing_file
    done = subprocess.run(
        [sys.executable, "-m", "bridge.process.cli", "mcp", "--config", str(path)],
        env={"EDGEBRIDGE_TOKEN": "not.a.jwt", "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "the token is refused" in done.stderr
    assert done.stdout == ""  # stdout is the protocol: nothing else is ever written there


async def test_a_keyed_publish_over_stdio_replays_after_the_process_restarts(
    tmp_path, bet_schema, kafka_bootstrap
) -> None:
    names = {k: f"mcp-stdio-{k}-{uuid.uuid4().hex[:8]}" for k in ("odds", "bets", "verified")}
    path = tmp_path / "routing.toml"
    ledger = f'mcp_idempotency_topic = "mcp-ledger-{uuid.uuid4().hex[:8]}"'
    routes = GUARD + mcp_routes(names["odds"], names["bets"], names["verified"], bet_schema)
    path.write_text(config_text(routes, extra=ledger))
    config = parse_config(path.read_text(), path, {"KAFKA_BOOTSTRAP": kafka_bootstrap})
    params = command(path, kafka_bootstrap, token(config, "alice", "bettor"))
    bet = {"matchId": "s1", "team": "away", "amount": 4, "idempotency_key": "stdio-1"}
    results = []
    for _ in range(2):  # the host restarts the server between the call and its retry
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            results.append(result_json(await session.call_tool("publish_place-bet", bet)))
    assert results[0]["published"] and "replayed" not in results[0], results
    assert results[1] == {**results[0], "replayed": True}
    assert len(await read_topic(kafka_bootstrap, names["bets"])) == 1


async def test_the_desktop_host_snippet_of_docs_mcp_works_as_written(kafka_bootstrap) -> None:
    """The claude_desktop_config.json of docs/mcp.md, with its placeholders filled in, started
    the way a host starts it: the shipped routing.toml, the installed `edgebridge` command."""
    import re

    text = (REPO / "docs" / "mcp.md").read_text()
    snippet = re.search(r"```json\n(.*?)```", text, re.S)
    assert snippet is not None
    server = json.loads(snippet.group(1).replace("/path/to/edgebridge", str(REPO)))
    server = server["mcpServers"]["edgebridge"]
    config = parse_config(
        (REPO / "routing.toml").read_text(),
        REPO / "routing.toml",
        {"KAFKA_BOOTSTRAP": kafka_bootstrap},
    )
    env = {
        **server["env"],
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "EDGEBRIDGE_TOKEN": token(config, "alice", "bettor"),
    }
    params = StdioServerParameters(command=server["command"], args=server["args"], env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name for t in (await session.list_tools()).tools}
        products = result_json(await session.call_tool("list_products", {}))
    assert {"publish_place-bet", "read_latest_odds", "read_matches"} <= tools
    assert "place-bet" in {p["name"] for p in products["products"]}


async def test_a_key_used_on_a_bridge_replays_over_stdio(
    tmp_path, bet_schema, kafka_bootstrap
) -> None:
    """The stdio process and a bridge share the ledger: the key decided on the bridge is
    replayed over stdio (read from the ledger, or forwarded to the bridge that owns it)."""
    from harness import start_bridge
    from mcp_support import mcp_session

    names = {k: f"mcp-stdio-{k}-{uuid.uuid4().hex[:8]}" for k in ("odds", "bets", "verified")}
    ledger = f'mcp_idempotency_topic = "mcp-ledger-{uuid.uuid4().hex[:8]}"'
    routes = GUARD + mcp_routes(names["odds"], names["bets"], names["verified"], bet_schema)
    bridge = await start_bridge(routes, kafka_bootstrap, ["mcp"], http_options=ledger)
    try:
        path = tmp_path / "routing.toml"
        path.write_text(config_text(routes, extra=ledger))
        bearer = token(bridge.config, "alice", "bettor")
        keys = [f"both-{n}" for n in range(6)]
        bet = {"matchId": "s2", "team": "home", "amount": 1}
        url = f"http://127.0.0.1:{bridge.web.port}/mcp"
        async with mcp_session(url, bearer) as session:
            first = [
                result_json(
                    await session.call_tool("publish_place-bet", {**bet, "idempotency_key": k})
                )
                for k in keys
            ]
        params = command(path, kafka_bootstrap, bearer)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            again = [
                result_json(
                    await session.call_tool("publish_place-bet", {**bet, "idempotency_key": k})
                )
                for k in keys
            ]
    finally:
        await bridge.stop()
    assert again == [{**one, "replayed": True} for one in first]
    assert len(await read_topic(kafka_bootstrap, names["bets"])) == len(keys)
