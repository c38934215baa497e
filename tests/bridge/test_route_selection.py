"""Which records of a route one stream carries, and the ids it hands out (SSE, gRPC and MCP all
select through bridge/model/route_selection.py, so their ids are interchangeable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.model.config import Route, parse_config
from bridge.model.message import Message
from bridge.model.position import Position, PositionError
from bridge.model.route_selection import RouteSelection

ROUTES = """
[[routes]]
name = "odds"
topic = "odds"
key = "{match}"
[routes.sse]
path = "/odds/{match}"

[[routes]]
name = "bets"
topic = "bets"
key = "{user}"
headers = { market = "{market}" }
[routes.sse]
path = "/bets/{user}/{market}"
"""


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Route]:
    path = Path(tmp_path_factory.mktemp("sel")) / "routing.toml"
    return {r.name: r for r in parse_config(ROUTES, path, {}).routes}


def test_a_key_named_by_the_parameters_is_read_by_key_alone(routes: dict[str, Route]) -> None:
    selection = RouteSelection(routes["odds"], {"match": "m1"})
    assert selection.key == b"m1"
    assert not selection.needs_filter  # the hub's key filter is exact
    assert RouteSelection(routes["odds"], {}).key is None


def test_parameters_in_headers_are_still_checked(routes: dict[str, Route]) -> None:
    selection = RouteSelection(routes["bets"], {"user": "ann", "market": "1x2"})
    assert selection.key == b"ann" and selection.needs_filter
    assert selection.accepts(Message("bets", b"ann", b"{}", (("market", b"1x2"),)))
    assert not selection.accepts(Message("bets", b"ann", b"{}", (("market", b"btts"),)))
    assert not selection.accepts(Message("bets", b"ann", b"{}", ()))


def test_an_id_resumes_only_the_stream_it_came_from(routes: dict[str, Route]) -> None:
    one = RouteSelection(routes["odds"], {"match": "m1"})
    other = RouteSelection(routes["odds"], {"match": "m2"})
    assert one.tag != other.tag
    position = Position({0: 3, 1: 7}, 0xABC)
    assert Position.decode(position.encode(one.tag), one.tag) == position
    with pytest.raises(PositionError):
        Position.decode(position.encode(one.tag), other.tag)
