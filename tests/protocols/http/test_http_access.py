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


async def test_without_the_sse_front_end_the_fetch_is_the_paths_only_get(protected) -> None:
    client, _ = protected
    # The dispatch table (bridge/web/dispatch.py): Accept picks between entries of one path
    # and method; with the SSE front-end not loaded the fetch is the only GET, so it answers
    # (and the guard refuses this anonymous caller) whatever Accept says.
    response = await client.get("/users/alice/profile", headers={"accept": "text/event-stream"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


GUARD = """
[guard]
secret = "an-http-test-secret-that-is-long-enough-for-hs256"
algorithms = ["HS256"]
"""


@pytest.fixture
async def guarded(bridge_factory, new_topic):
    from bridge.edge.tokens import mint_token

    topic = await new_topic(prefix="guarded")
    bridge = await bridge_factory(GUARD + PROTECTED.format(topic=topic), frontends=["http"])

    def token(subject: str, *roles: str) -> dict[str, str]:
        minted = mint_token(bridge.config.guard_settings, subject, roles)
        return {"authorization": f"Bearer {minted}"}

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as client:
        yield client, topic, token


async def test_a_bettor_token_produces_keyed_by_identity(guarded, read_all) -> None:
    client, topic, token = guarded
    response = await client.post("/protected/bets", content=b"{}", headers=token("alice", "bettor"))
    assert response.status_code == 202
    [record] = await read_all(topic)
    assert record.key == b"alice"


async def test_a_token_without_the_role_is_403_and_produces_nothing(guarded, read_all) -> None:
    client, topic, token = guarded
    response = await client.post("/protected/bets", content=b"{}", headers=token("eve", "viewer"))
    assert response.status_code == 403
    assert response.json()["type"].endswith("/forbidden")
    assert await read_all(topic) == []


async def test_a_bad_token_is_401_invalid_token(guarded, read_all) -> None:
    client, topic, _ = guarded
    for authorization in ("Bearer not.a.jwt", "Basic YWxpY2U6cHc="):
        response = await client.post(
            "/protected/bets", content=b"{}", headers={"authorization": authorization}
        )
        assert response.status_code == 401
        assert response.json()["type"].endswith("/invalid-token")
        assert "error=" in response.headers["www-authenticate"]
    assert await read_all(topic) == []


async def test_idempotency_keys_are_scoped_per_identity(guarded, read_all) -> None:
    client, topic, token = guarded
    same = {"idempotency-key": "shared-key"}
    alice = await client.post(
        "/protected/bets", content=b"{}", headers={**same, **token("alice", "bettor")}
    )
    bob = await client.post(
        "/protected/bets", content=b"{}", headers={**same, **token("bob", "bettor")}
    )
    again = await client.post(
        "/protected/bets", content=b"{}", headers={**same, **token("alice", "bettor")}
    )
    assert (alice.status_code, bob.status_code, again.status_code) == (202, 202, 202)
    assert "idempotent-replayed" not in bob.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert sorted(r.key for r in await read_all(topic)) == [b"alice", b"bob"]


async def test_fetch_only_ones_own_identity(guarded) -> None:
    client, _, token = guarded
    assert (
        await client.get("/users/alice/profile", headers=token("bob", "bettor"))
    ).status_code == 403
    assert (
        await client.get("/users/alice/profile", headers=token("alice", "bettor"))
    ).status_code == 404
    query = {"access_token": token("alice", "bettor")["authorization"].split()[1]}
    assert (await client.get("/users/alice/profile", params=query)).status_code == 404
