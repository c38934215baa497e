"""Authorization at the edge and sharing the listener: a denied request never produces a record;
event-stream GETs are left to the SSE front-end."""

from __future__ import annotations

import httpx
import pytest

PROTECTED = """
[[routes]]
name = "protected-bet"
topic = "{topic}"
key = "{{$identity}}"

[routes.http]
method = "POST"
path = "/protected/bets"
idempotency = "optional"

[routes.access]
publish = ["bettor"]

[[routes]]
name = "own-profile"
topic = "{topic}"
key = "{{user}}"

[routes.http]
method = "GET"
path = "/users/{{user}}/profile"

[routes.sse]
path = "/users/{{user}}/profile"

[routes.access]
subscribe = ["bettor"]
identity = "user"
"""


@pytest.fixture
async def protected(bridge_factory, new_topic):
    topic = await new_topic(prefix="protected")
    bridge = await bridge_factory(PROTECTED.format(topic=topic), frontends=["http"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as client:
        yield client, topic


async def test_anonymous_publish_to_a_role_route_is_401_and_produces_nothing(
    protected, read_all
) -> None:
    client, topic = protected
    response = await client.post(
        "/protected/bets", content=b"{}", headers={"idempotency-key": "a1"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "token" in response.json()["detail"]
    assert await read_all(topic) == []


async def test_anonymous_fetch_of_an_identity_route_is_401(protected) -> None:
    client, _ = protected
    response = await client.get("/users/alice/profile")
    assert response.status_code == 401


async def test_event_stream_get_is_left_to_sse(protected) -> None:
    client, _ = protected
    # Without the SSE front-end loaded nobody serves it: Quart's 404, as problem+json, rather
    # than this front-end answering (and refusing) an event-stream request.
    response = await client.get("/users/alice/profile", headers={"accept": "text/event-stream"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
