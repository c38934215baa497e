"""SSE streams against a real bridge on the real embedded broker, read with httpx over sockets."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sse_support import EventParser, base_url, produce, read_events

from bridge.model import strict_json
from bridge.model.position import Position
from bridge.model.route_selection import selection_tag as channel_tag


def routes(topic: str, table: str | None = None, extra: str = "") -> str:
    text = f"""
[[routes]]
name = "odds"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/matches/{{match}}/odds"
event = "odds"
retry_ms = 150
heartbeat_s = 0.2
{extra}

[[routes]]
name = "all-odds"
topic = "{topic}"

[routes.sse]
path = "/odds"
allow_earliest = true
"""
    if table:
        text += f"""
[[routes]]
name = "matches"
topic = "{table}"
key = "{{match}}"

[routes.sse]
path = "/matches"
event = "match"
start = "snapshot"
"""
    return text


@pytest.fixture
async def odds(bridge_factory, new_topic):
    topic = await new_topic(partitions=3)
    bridge = await bridge_factory(routes(topic), frontends=["sse"])
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        yield bridge, topic, client


async def open_stream(client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None):
    """Start a fresh stream and read up to its starting position (the first id it announces):
    the bridge has subscribed by then. Returns the events before it too (a snapshot)."""
    request = client.build_request(
        "GET", path, headers={"Accept": "text/event-stream", **(headers or {})}
    )
    response = await client.send(request, stream=True)
    assert response.status_code == 200, (response.status_code, await response.aread())
    parser = EventParser()
    chunks = response.aiter_raw()
    initial = []
    while not parser.last_id:
        initial.extend(parser.feed(await asyncio.wait_for(anext(chunks), 10)))
    response.initial = initial  # type: ignore[attr-defined]
    return response, parser, chunks


async def collect(parser: EventParser, chunks, count: int, timeout: float = 10):
    events = []

    async def run():
        while len(events) < count:
            events.extend(parser.feed(await anext(chunks)))

    await asyncio.wait_for(run(), timeout)
    return events


async def test_live_events_are_filtered_by_path_and_shaped(odds) -> None:
    bridge, topic, client = odds
    response, parser, chunks = await open_stream(client, "/matches/1/odds")
    try:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert parser.retry_ms == 150
        assert parser.last_id, "a fresh stream announces its starting position"
        (stream,) = bridge.frontend("sse").streams
        assert stream.writes_directly, "events skip Hypercorn's per-write stack (or have none)"
        await produce(bridge, topic, ["other match"], key="2")
        await produce(
            bridge, topic, ['{"home": 1.5}', "line one\nline two\r\nline three", "", None], key="1"
        )
        events = await collect(parser, chunks, 4)
    finally:
        await response.aclose()
    assert [e.event for e in events] == ["odds", "odds", "odds", "delete"]
    assert [e.data for e in events] == ['{"home": 1.5}', "line one\nline two\nline three", "", "1"]
    ids = [e.id for e in events]
    assert len(set(ids)) == 4


async def test_resume_by_header_and_by_query_is_exact(odds) -> None:
    bridge, topic, client = odds
    response, parser, chunks = await open_stream(client, "/matches/7/odds")
    await produce(bridge, topic, [f"v{i}" for i in range(5)], key="7")
    first = await collect(parser, chunks, 2)
    await response.aclose()
    resume_id = first[1].id  # after v1 (more may have arrived in the same read)
    await produce(bridge, topic, [f"w{i}" for i in range(3)], key="7")
    by_header, _ = await read_events(client, "/matches/7/odds", 6, {"Last-Event-ID": resume_id})
    assert [e.data for e in by_header] == ["v2", "v3", "v4", "w0", "w1", "w2"]
    by_query, _ = await read_events(client, f"/matches/7/odds?lastEventId={resume_id}", 6)
    assert [e.data for e in by_query] == [e.data for e in by_header]
    # The header wins over the query parameter.
    later = by_header[3].id
    both, _ = await read_events(
        client, f"/matches/7/odds?lastEventId={resume_id}", 2, {"Last-Event-ID": later}
    )
    assert [e.data for e in both] == ["w1", "w2"]


async def test_a_client_that_drops_before_any_event_still_resumes_exactly(odds) -> None:
    bridge, topic, client = odds
    response, parser, _ = await open_stream(client, "/matches/3/odds")
    joined_at = parser.last_id
    await response.aclose()
    await produce(bridge, topic, ["while away"], key="3")
    events, _ = await read_events(client, "/matches/3/odds", 1, {"Last-Event-ID": joined_at})
    assert [e.data for e in events] == ["while away"]


@pytest.mark.parametrize(
    "bad_id",
    ["garbage!!", "AQ", Position({0: 1}).encode(12345), "A" * 2000],
    ids=["not-base64", "truncated", "other-tag", "too-long"],
)
async def test_an_id_that_cannot_resume_this_stream_is_refused(odds, bad_id: str) -> None:
    _, _, client = odds
    response = await client.get(
        "/matches/1/odds", headers={"Accept": "text/event-stream", "Last-Event-ID": bad_id}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/bad-last-event-id")
    assert problem["status"] == 400
    assert "Last-Event-ID" in problem["detail"]


async def test_an_id_of_another_match_is_refused_not_replayed(odds) -> None:
    _, _, client = odds
    response, parser, _ = await open_stream(client, "/matches/1/odds")
    other_id = parser.last_id
    await response.aclose()
    refused = await client.get("/matches/2/odds", headers={"Last-Event-ID": other_id})
    assert refused.status_code == 400
    assert "another stream" in refused.json()["detail"]


async def test_an_id_beyond_the_end_of_the_topic_is_refused(odds) -> None:
    bridge, _, client = odds
    route = bridge.routes.by_name["odds"]
    forged = Position({0: 10_000, 1: 0, 2: 0}).encode(channel_tag(route, {"match": "1"}))
    response = await client.get("/matches/1/odds", headers={"Last-Event-ID": forged})
    assert response.status_code == 400
    assert "beyond the end" in response.json()["detail"]


async def test_route_without_parameters_streams_the_whole_topic(odds) -> None:
    bridge, topic, client = odds
    response, parser, chunks = await open_stream(client, "/odds")
    await produce(bridge, topic, ["a"], key="1")
    await produce(bridge, topic, ["b"], key="2")
    await produce(bridge, topic, ["c"], key=None)
    events = await collect(parser, chunks, 3)
    await response.aclose()
    assert sorted(e.data for e in events) == ["a", "b", "c"]
    assert {e.event for e in events} == {"message"}


async def test_from_earliest_only_where_the_route_allows_it(odds) -> None:
    bridge, topic, client = odds
    await produce(bridge, topic, ["old1", "old2"], key="5")
    events, _ = await read_events(client, "/odds?from=earliest", 2)
    assert sorted(e.data for e in events) == ["old1", "old2"]
    refused = await client.get("/matches/5/odds?from=earliest")
    assert refused.status_code == 400
    assert refused.json()["type"].endswith("/bad-from")
    assert "earliest" in refused.json()["detail"]


async def test_heartbeat_comments_keep_a_quiet_stream_alive(odds) -> None:
    _, _, client = odds
    response, parser, chunks = await open_stream(client, "/matches/9/odds")
    try:
        while parser.comments < 2:
            parser.feed(await asyncio.wait_for(anext(chunks), 10))
    finally:
        await response.aclose()
    assert parser.comments >= 2


async def test_unknown_path_and_wrong_method(odds) -> None:
    _, _, client = odds
    assert (await client.post("/odds", content=b"x")).status_code == 405
    assert (
        await client.get("/matches/1/odds/extra", headers={"Accept": "text/event-stream"})
    ).status_code == 404


async def test_cors_allows_last_event_id(odds) -> None:
    _, _, client = odds
    preflight = await client.options(
        "/odds",
        headers={
            "Origin": "https://bets.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://bets.example"
    assert "last-event-id" in preflight.headers["access-control-allow-headers"]
    response, _, _ = await open_stream(client, "/odds", {"Origin": "https://bets.example"})
    assert response.headers["access-control-allow-origin"] == "https://bets.example"
    await response.aclose()


async def test_snapshot_sends_current_values_then_live_without_gap_or_duplicate(
    bridge_factory, new_topic
) -> None:
    topic, table = await new_topic(partitions=2), await new_topic(partitions=2, compact=True)
    bridge = await bridge_factory(routes(topic, table), frontends=["sse"])
    await produce(bridge, table, ['{"v":1}'], key="m1")
    await produce(bridge, table, ['{"v":1}', '{"v":2}'], key="m2")
    await produce(bridge, table, ['{"v":1}', None], key="m3")  # deleted before anyone looked
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        response, parser, chunks = await open_stream(client, "/matches")
        snapshot, snapshot_id = response.initial, parser.last_id
        await produce(bridge, table, ['{"v":3}'], key="m1")
        live = await collect(parser, chunks, 1)
        await response.aclose()
        assert sorted(e.data for e in snapshot) == ['{"v":1}', '{"v":2}']
        assert {e.event for e in snapshot} == {"match"}
        assert all(e.id == "" for e in snapshot), "a half-read snapshot must not be resumable"
        assert [(e.data, e.event) for e in live] == [('{"v":3}', "match")]
        # A client resuming by the snapshot's id continues live, with no second snapshot.
        await produce(bridge, table, ['{"v":4}'], key="m2")
        resumed, _ = await read_events(client, "/matches", 2, {"Last-Event-ID": snapshot_id})
        assert [e.data for e in resumed] == ['{"v":3}', '{"v":4}']


async def test_snapshot_of_one_key_when_the_path_names_it(bridge_factory, new_topic) -> None:
    table = await new_topic(partitions=3, compact=True)
    routes_toml = f"""
[[routes]]
name = "profile"
topic = "{table}"
key = "{{user}}"

[routes.sse]
path = "/users/{{user}}/profile"
start = "snapshot"
"""
    bridge = await bridge_factory(routes_toml, frontends=["sse"])
    await produce(bridge, table, ['{"balance":10}', '{"balance":7}'], key="alice")
    await produce(bridge, table, ['{"balance":99}'], key="bob")
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        response, parser, chunks = await open_stream(client, "/users/alice/profile")
        assert [e.data for e in response.initial] == ['{"balance":7}']
        await produce(bridge, table, ['{"balance":100}'], key="bob")
        await produce(bridge, table, ['{"balance":5}'], key="alice")
        live = await collect(parser, chunks, 1)
        await response.aclose()
    assert [e.data for e in live] == ['{"balance":5}']


def shared_path_routes(topic: str) -> str:
    """A stream path that is also an HTTP POST (produce) and one that is also a GET (fetch)."""
    return f"""
[[routes]]
name = "scores"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/matches/{{match}}/scores"

[routes.http]
method = "POST"
path = "/matches/{{match}}/scores"

[[routes]]
name = "profile"
topic = "{topic}"
key = "{{user}}"

[routes.sse]
path = "/users/{{user}}/profile"

[routes.http]
method = "GET"
path = "/users/{{user}}/profile"
"""


async def test_paths_shared_with_http_routes(bridge_factory, new_topic) -> None:
    """A stream path that is also an HTTP POST (produce) or GET (fetch): clients that accept
    text/event-stream (every EventSource) get the stream, the others the HTTP route."""
    topic = await new_topic()
    bridge = await bridge_factory(shared_path_routes(topic), frontends=["sse", "http"])
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        events = {"Accept": "text/event-stream"}
        async with client.stream("GET", "/matches/1/scores", headers=events) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
        posted = await client.post("/matches/1/scores", content=b'{"home": 1}')
        assert posted.status_code < 300, posted.text
        fetched = await client.get("/users/alice/profile", headers={"Accept": "application/json"})
        assert not fetched.headers.get("content-type", "").startswith("text/event-stream")
        async with client.stream("GET", "/users/alice/profile", headers=events) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
async def test_a_plain_get_of_a_stream_that_shares_its_path_with_a_post_is_the_stream(
    bridge_factory, new_topic, accept: str | None
) -> None:
    """curl and other plain clients send no (or another) Accept: on a path whose only GET is an
    event stream they still get the stream, not the POST route's 405; a path that also has an
    HTTP fetch keeps choosing by Accept."""
    topic = await new_topic()
    bridge = await bridge_factory(shared_path_routes(topic), frontends=["sse", "http"])
    headers = {"Accept": accept} if accept is not None else {}
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        request = client.build_request("GET", "/matches/1/scores", headers=headers)
        if accept is None:
            del request.headers["accept"]  # httpx sends */* unless told not to
        response = await client.send(request, stream=True)
        try:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            parser, chunks = EventParser(), response.aiter_raw()
            while not parser.last_id:  # subscribed once the starting id has come
                parser.feed(await asyncio.wait_for(anext(chunks), 10))
            posted = await client.post("/matches/1/scores", content=b'{"home": 2}')
            assert posted.status_code < 300, posted.text
            events = await collect(parser, chunks, 1)
            assert [e.data for e in events] == ['{"home": 2}']
        finally:
            await response.aclose()
        head = await client.head("/matches/1/scores", headers=headers)
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        # The other methods are still the HTTP route's: a DELETE is refused, listing them all.
        deleted = await client.delete("/matches/1/scores")
        assert deleted.status_code == 405
        assert {"GET", "POST"} <= {m.strip() for m in deleted.headers["allow"].split(",")}
        fetched = await client.get("/users/alice/profile", headers=headers)
        assert not fetched.headers.get("content-type", "").startswith("text/event-stream")


async def test_a_json_route_never_streams_a_record_that_is_not_strict_json(
    bridge_factory, new_topic
) -> None:
    """Odds written past the edge with NaN in them: the page gets an ``invalid-record`` event in
    their place (with an id, so a resume goes past it), then the next good record."""
    topic = await new_topic()
    extra = 'content_type = "application/json"'
    text = routes(topic).replace('[[routes]]\nname = "odds"', f'[[routes]]\nname = "odds"\n{extra}')
    bridge = await bridge_factory(text, frontends=["sse"])
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        response, parser, chunks = await open_stream(client, "/matches/1/odds")
        try:
            await produce(bridge, topic, ['{"home":NaN}', '{"home":2.5}'], key="1")
            events = await collect(parser, chunks, 2)
        finally:
            await response.aclose()
    assert [e.event for e in events] == ["invalid-record", "odds"]
    assert "NaN" not in events[0].data
    assert strict_json.loads(events[0].data)["type"] == "invalid-record"
    assert events[1].data == '{"home":2.5}'
    assert events[0].id and events[0].id != events[1].id
