"""Produce over HTTP against a real bridge on the embedded broker: every status, and exactly one
Kafka record per Idempotency-Key."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

BET = {"userId": "u1", "matchId": "m1", "team": "home", "amount": 5}
PROBLEM = "application/problem+json"


def key() -> dict[str, str]:
    return {"idempotency-key": uuid.uuid4().hex}


async def test_plain_produce_is_acked_and_carries_route_headers(client, topics, read_all) -> None:
    response = await client.put(
        "/matches/m7/note", content=b"kick-off", headers={"idempotency-key": "n-1"}
    )
    assert response.status_code == 202
    body = response.json()
    records = await read_all(topics["bets"])
    [record] = [
        r for r in records if r.partition == body["partition"] and r.offset == body["offset"]
    ]
    assert record.key == b"m7"
    assert record.value == b"kick-off"
    headers = dict(record.headers)
    assert headers["note-source"] == b"http-m7"
    assert headers["idem"] == b"n-1"
    assert (
        headers["correlation-id"].decode()
        == body["correlationId"]
        == response.headers["correlation-id"]
    )


async def test_invalid_body_names_each_failing_field_and_produces_nothing(
    client, topics, read_all
) -> None:
    bad = {"userId": 7, "team": "draw", "amount": -1, "extra": True}
    response = await client.post("/bets", json=bad, headers=key())
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    pointers = {e["pointer"] for e in response.json()["errors"]}
    assert {"/userId", "/team", "/amount", "/matchId"} <= pointers
    assert await read_all(topics["bets"]) == []


async def test_refused_payload_goes_to_the_dead_letter_topic(client, topics, read_all) -> None:
    bad = json.dumps({"userId": "u1", "matchId": "m1", "amount": "lots"}).encode()
    response = await client.post(
        "/bets", content=bad, headers={**key(), "content-type": "application/json"}
    )
    assert response.status_code == 400
    [dead] = await read_all(topics["bets"] + "-dead")
    assert dead.value == bad
    headers = dict(dead.headers)
    assert headers["edgebridge-dlq-reason"] == b"schema"
    assert headers["edgebridge-dlq-address"] == b"/bets"
    assert json.loads(headers["edgebridge-dlq-violations"])[0]["pointer"] == "/amount"


async def test_not_json_is_400(client) -> None:
    response = await client.post(
        "/bets", content=b"{nope", headers={**key(), "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["errors"][0]["detail"]


async def test_wrong_content_type_is_415(client, topics, read_all) -> None:
    response = await client.post(
        "/bets", content=json.dumps(BET), headers={**key(), "content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == PROBLEM
    assert "application/json" in response.json()["detail"]
    assert await read_all(topics["bets"]) == []


async def test_body_over_route_limit_is_413_declared_or_streamed(client, topics, read_all) -> None:
    big = {**BET, "matchId": "m" * 600}
    response = await client.post("/bets", json=big, headers=key())
    assert response.status_code == 413
    assert response.json()["limit"] == 512

    async def chunks():
        for _ in range(10):
            yield b"x" * 100

    response = await client.post(
        "/bets", content=chunks(), headers={**key(), "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert await read_all(topics["bets"]) == []


async def test_missing_and_malformed_idempotency_key_are_400(client) -> None:
    response = await client.post("/bets", json=BET)
    assert response.status_code == 400
    assert response.json()["type"].endswith("/idempotency-key-missing")
    response = await client.post("/bets", json=BET, headers={"idempotency-key": "k" * 300})
    assert response.status_code == 400
    assert response.json()["type"].endswith("/invalid-idempotency-key")


async def test_retry_replays_stored_response_without_a_second_record(
    client, topics, read_all
) -> None:
    headers = {**key(), "prefer": "respond-async"}
    first = await client.post("/bets", json=BET, headers=headers)
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    # An sf-string key (quoted) is the same key.
    quoted = {**headers, "idempotency-key": f'"{headers["idempotency-key"]}"'}
    for retry_headers in (headers, quoted):
        retry = await client.post("/bets", json=BET, headers=retry_headers)
        assert retry.status_code == 202
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.headers["location"] == first.headers["location"]
        assert retry.content == first.content
    records = await read_all(topics["bets"])
    assert len(records) == 1
    assert records[0].key == b"u1"


async def test_keys_expire_after_the_routes_ttl(client, topics, read_all) -> None:
    headers = key()
    first = await client.post("/matches/m9/note", content=b"x", headers=headers)
    replay = await client.post("/matches/m9/note", content=b"x", headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    await asyncio.sleep(1.5)  # past idempotency_ttl_s = 1: the key is free again
    again = await client.post("/matches/m9/note", content=b"x", headers=headers)
    assert again.status_code == 202
    assert "idempotent-replayed" not in again.headers
    assert again.json()["offset"] != first.json()["offset"]
    assert len(await read_all(topics["bets"])) == 2


async def test_same_key_different_payload_is_422(client, topics, read_all) -> None:
    headers = {**key(), "prefer": "respond-async"}
    assert (await client.post("/bets", json=BET, headers=headers)).status_code == 202
    response = await client.post("/bets", json={**BET, "amount": 500}, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert len(await read_all(topics["bets"])) == 1


async def test_keys_are_scoped_per_route(client, topics, read_all) -> None:
    shared = key()
    a = await client.put("/matches/m1/note", content=b"a", headers=shared)
    b = await client.put("/matches/m2/note", content=b"a", headers=shared)
    # Same route, different path: a different request under the same key.
    assert (a.status_code, b.status_code) == (202, 422)
    c = await client.post("/bets", json=BET, headers={**shared, "prefer": "respond-async"})
    assert c.status_code == 202  # another route: another scope
    assert len(await read_all(topics["bets"])) == 2


async def test_retry_while_first_in_flight_is_409(client, topics, read_all) -> None:
    # The first waits for a reply that never comes (up to 2 s); the retry meanwhile gets 409.
    headers = {**key(), "prefer": "wait=2"}
    first = asyncio.create_task(client.post("/bets", json=BET, headers=headers))
    for _ in range(200):
        if await read_all(topics["bets"]):
            break
        await asyncio.sleep(0.02)
    retry = await client.post("/bets", json=BET, headers=headers)
    assert retry.status_code == 409
    assert retry.headers["retry-after"]
    assert (await first).status_code == 202
    replay = await client.post("/bets", json=BET, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(await read_all(topics["bets"])) == 1


async def test_fifty_concurrent_retries_produce_exactly_one_record(
    http_bridge, topics, read_all
) -> None:
    headers = {**key(), "prefer": "respond-async"}
    port = http_bridge.web.port
    # Separate connections, as retries from a flaky network would be.
    clients = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) for _ in range(50)
    ]
    try:
        responses = await asyncio.gather(
            *(c.post("/bets", json=BET, headers=headers) for c in clients)
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {202, 409}
    fresh = [
        r for r in responses if r.status_code == 202 and "idempotent-replayed" not in r.headers
    ]
    assert len(fresh) == 1
    records = await read_all(topics["bets"])
    assert len(records) == 1
    assert dict(records[0].headers)["correlation-id"].decode() == fresh[0].headers["correlation-id"]


async def test_unknown_path_404_and_wrong_method_405_with_allow(client) -> None:
    response = await client.get("/no/such/path")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    response = await client.delete("/bets")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["allow"] == "POST, OPTIONS"
    response = await client.put("/profiles/u1")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD, POST, OPTIONS"  # GET implies HEAD
    response = await client.get("/matches/m1/note")
    assert response.headers["allow"] == "POST, PUT, OPTIONS"


async def test_cors_preflight_and_exposed_headers(client) -> None:
    origin = {"origin": "https://bets.example"}
    preflight = await client.options(
        "/bets",
        headers={
            **origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "idempotency-key, prefer",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://bets.example"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    for name in ("idempotency-key", "prefer", "if-none-match", "content-type"):
        assert name in allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    response = await client.post(
        "/bets", json=BET, headers={**origin, **key(), "prefer": "respond-async"}
    )
    exposed = response.headers["access-control-expose-headers"].lower()
    for name in ("etag", "location", "idempotent-replayed"):
        assert name in exposed
    assert response.headers["access-control-allow-origin"] == "https://bets.example"


MONEY_BREAKERS = [
    ('{"userId":"u1","matchId":"m1","team":"home","amount":NaN}', "/amount", "NaN"),
    ('{"userId":"u1","matchId":"m1","team":"home","amount":Infinity}', "/amount", "Infinity"),
    ('{"userId":"u1","matchId":"m1","team":"home","amount":-Infinity}', "/amount", "-Infinity"),
    ('{"userId":"u1","matchId":"m1","team":"home","amount":1e999}', "/amount", "out of range"),
    # Duplicate members: json.loads keeps the last one, so a checked 5 could become -1e9 later.
    (
        '{"userId":"u1","matchId":"m1","team":"home","amount":5,"amount":-1e9}',
        "/amount",
        "more than once",
    ),
]


@pytest.mark.parametrize(("body", "pointer", "detail"), MONEY_BREAKERS)
async def test_money_breaking_json_is_400_with_the_pointer_and_produces_nothing(
    client, topics, read_all, body, pointer, detail
) -> None:
    response = await client.post(
        "/bets", content=body.encode(), headers={**key(), "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    [error] = response.json()["errors"]
    assert error["pointer"] == pointer
    assert detail in error["detail"]
    assert await read_all(topics["bets"]) == []


async def test_a_route_without_schema_refuses_non_finite_json_it_is_told_is_json(
    client, topics, read_all
) -> None:
    refused = await client.put(
        "/matches/m1/note",
        content=b'{"odds":{"home":NaN}}',
        headers={**key(), "content-type": "application/json"},
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["pointer"] == "/odds/home"
    # The same bytes as opaque text are the client's business: not JSON, not parsed.
    opaque = await client.put(
        "/matches/m1/note", content=b"NaN", headers={**key(), "content-type": "text/plain"}
    )
    assert opaque.status_code == 202
    assert [r.value for r in await read_all(topics["bets"])] == [b"NaN"]


async def test_the_same_json_bet_in_another_member_order_is_the_same_request(
    client, topics, read_all
) -> None:
    headers = {**key(), "content-type": "application/json"}
    first = await client.post(
        "/bets", content=b'{"userId":"u1","matchId":"m1","team":"home","amount":5}', headers=headers
    )
    assert first.status_code == 202
    again = await client.post(
        "/bets",
        content=b'{ "amount": 5, "team": "home",\n  "matchId": "m1", "userId": "u1" }',
        headers=headers,
    )
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    changed = await client.post(
        "/bets", content=b'{"amount":6,"team":"home","matchId":"m1","userId":"u1"}', headers=headers
    )
    assert changed.status_code == 422
    assert [r.value for r in await read_all(topics["bets"])] == [
        b'{"userId":"u1","matchId":"m1","team":"home","amount":5}'
    ]
