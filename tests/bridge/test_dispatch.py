"""The listener's dispatch table (bridge/web/dispatch.py): sans-io rules, then a real bridge
whose registrations conflict, and a 405 from the table over a real socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from harness import REPO, config_text, free_port

from bridge.web.dispatch import WEBSOCKET, DispatchTable, RouteConflict

STREAM, FETCH, POST, WS = "stream", "fetch", "post", "ws"
ACCEPT_EVENTS = [(b"accept", b"text/event-stream")]


def table() -> DispatchTable:
    t = DispatchTable()
    t.add(
        "route odds (sse)", "/odds/{match}", ["GET", "HEAD", "OPTIONS"], STREAM, "text/event-stream"
    )
    t.add("route odds-latest (http)", "/odds/{id}", ["GET", "HEAD", "OPTIONS"], FETCH)
    t.add("route bets (http)", "/bets", ["POST", "OPTIONS"], POST)
    t.add("MQTT over WebSocket", "/mqtt", [WEBSOCKET], WS)
    return t


def answer(t: DispatchTable, method: str, path: str, headers=()) -> object:
    found = t.resolve(method, path, headers)
    if found is None:
        return None
    return found.entry.handler if found.entry else found.allow


def test_accept_picks_between_a_stream_and_a_fetch_of_one_path() -> None:
    t = table()
    assert answer(t, "GET", "/odds/m1", ACCEPT_EVENTS) == STREAM
    assert answer(t, "GET", "/odds/m1", [(b"accept", b"application/json")]) == FETCH
    assert answer(t, "GET", "/odds/m1") == FETCH
    assert answer(t, "OPTIONS", "/odds/m1") == FETCH  # the preflight: the entry without media


def test_unknown_paths_are_not_the_tables_and_wrong_methods_are_405_with_allow() -> None:
    t = table()
    assert answer(t, "GET", "/nowhere") is None
    assert answer(t, "GET", "/odds/m1/extra") is None
    assert answer(t, "DELETE", "/odds/m1") == ("GET", "HEAD", "OPTIONS")
    assert answer(t, "GET", "/bets") == ("POST", "OPTIONS")
    assert answer(t, "HEAD", "/bets") == ("POST", "OPTIONS")
    assert answer(t, WEBSOCKET, "/mqtt") == WS
    assert answer(t, "GET", "/mqtt") is None  # a WebSocket-only path: 404, not 405 "Allow: "


def test_a_literal_level_beats_a_parameter_and_head_is_a_get() -> None:
    t = DispatchTable()
    t.add("route any (http)", "/matches/{match}", ["GET"], "any")
    t.add("route live (http)", "/matches/live", ["GET"], "live")
    t.add("route rest (http)", "/files/{path...}", ["GET"], "rest")
    assert answer(t, "GET", "/matches/live") == "live"
    assert answer(t, "HEAD", "/matches/live") == "live"
    assert answer(t, "GET", "/matches/m7") == "any"
    assert answer(t, "GET", "/files/a/b/c") == "rest"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/odds/{match}", "/odds/{match}"),
        ("/odds/{match}", "/odds/{id}"),  # the same shape, whatever the parameters are named
    ],
)
def test_two_entries_that_could_answer_one_request_are_refused(first: str, second: str) -> None:
    t = DispatchTable()
    t.add("route a (http)", first, ["GET", "POST"], "a")
    with pytest.raises(RouteConflict) as refused:
        t.add("route b (http)", second, ["POST", "PUT"], "b")
    message = str(refused.value)
    assert "route a (http)" in message and "route b (http)" in message and "POST" in message


def test_entries_apart_by_method_or_media_are_not_conflicts() -> None:
    t = DispatchTable()
    t.add("a", "/x/{p}", ["GET"], "a")
    t.add("b", "/x/{p}", ["POST"], "b")
    t.add("c", "/x/{p}", ["GET"], "c", "text/event-stream")
    t.add("d", "/x/y", ["GET"], "d")  # more specific: precedence, not a conflict


ROUTES = """
[[routes]]
name = "agents"
topic = "agents"
[routes.sse]
path = "/mcp"
"""


@pytest.mark.broker
def test_a_route_on_the_mcp_path_stops_the_start_naming_both(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """MCP's GET is an event stream too: an SSE route on its path could take its requests.
    Before the table, whichever mounted first took them, silently."""
    config = tmp_path / "routing.toml"
    config.write_text(config_text(ROUTES, mqtt_port=free_port(), http_port=free_port()))
    command = [sys.executable, "-m", "bridge.process.cli", "run", "--config", str(config)]
    command += ["--workers", "1", "--frontends", "sse,mcp", "--log-format", "json"]
    result = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard, not a timing assertion
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "edgebridge: cannot start: /mcp: " in result.stderr
    assert "route agents (sse)" in result.stderr and "MCP" in result.stderr


@pytest.mark.broker
async def test_a_wrong_method_on_a_stream_path_is_405_from_the_table(bridge_factory) -> None:
    bridge = await bridge_factory(ROUTES.replace("/mcp", "/agents"), frontends=["sse", "http"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as client:
        response = await client.post("/agents", content=b"x")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD, OPTIONS"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/method-not-allowed")
        assert (await client.get("/nothing-here")).status_code == 404
