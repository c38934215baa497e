"""Fetch from a compacted topic: latest value per key, ETag/304, long-poll on a change,
collections, 404 for an unknown key."""

from __future__ import annotations

import asyncio

from bridge.model import strict_json

PROBLEM = "application/problem+json"


async def put_profile(client, user: str, value: bytes) -> None:
    response = await client.post(f"/profiles/{user}", content=value)
    assert response.status_code == 202


async def get_when(client, path: str, wanted: bytes, **kwargs):
    """GET until the bridge's table has caught up with a write (it follows Kafka)."""
    for _ in range(200):
        response = await client.get(path, **kwargs)
        if response.status_code == 200 and response.content == wanted:
            return response
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"{path} never returned {wanted!r}: {response.status_code} {response.text}"
    )


async def test_latest_value_with_etag_and_304(client) -> None:
    await put_profile(client, "ann", b'{"balance":1}')
    await put_profile(client, "ann", b'{"balance":2}')
    response = await get_when(client, "/profiles/ann", b'{"balance":2}')
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    not_modified = await client.get("/profiles/ann", headers={"if-none-match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["etag"] == etag
    assert (
        await client.get("/profiles/ann", headers={"if-none-match": "W/" + etag})
    ).status_code == 304
    # Another key never matches this key's ETag, even at the same position.
    await put_profile(client, "bob", b"{}")
    other = await get_when(client, "/profiles/bob", b"{}")
    assert other.headers["etag"] != etag
    assert (await client.get("/profiles/bob", headers={"if-none-match": etag})).status_code == 200


async def test_unknown_key_is_404(client) -> None:
    response = await client.get("/profiles/nobody")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


async def test_long_poll_returns_when_the_key_changes(client) -> None:
    await put_profile(client, "cy", b"v1")
    first = await get_when(client, "/profiles/cy", b"v1")
    etag = first.headers["etag"]
    poll = asyncio.create_task(
        client.get("/profiles/cy", headers={"if-none-match": etag, "prefer": "wait=8"})
    )
    await asyncio.sleep(0.3)
    assert not poll.done()
    await put_profile(client, "other", b"x")  # a change of another key does not end the wait
    await asyncio.sleep(0.3)
    assert not poll.done()
    await put_profile(client, "cy", b"v2")
    changed = await poll
    assert changed.status_code == 200
    assert changed.content == b"v2"
    assert changed.headers["etag"] != etag


async def test_long_poll_without_change_ends_in_304(client) -> None:
    await put_profile(client, "dee", b"same")
    first = await get_when(client, "/profiles/dee", b"same")
    response = await client.get(
        "/profiles/dee", headers={"if-none-match": first.headers["etag"], "prefer": "wait=0.3"}
    )
    assert response.status_code == 304


async def test_collection_is_latest_value_per_key_and_long_polls(client) -> None:
    await put_profile(client, "e1", b'{"n":1}')
    await put_profile(client, "e2", b'{"n":2}')
    await put_profile(client, "e1", b'{"n":3}')
    await put_profile(client, "e3", b"not json")
    await get_when(client, "/profiles/e3", b"not json")
    response = await client.get("/profiles")
    assert response.status_code == 200
    items = response.json()
    assert {"n": 3} in items and {"n": 2} in items and "not json" in items
    assert {"n": 1} not in items
    etag = response.headers["etag"]
    assert (await client.get("/profiles", headers={"if-none-match": etag})).status_code == 304
    poll = asyncio.create_task(
        client.get("/profiles", headers={"if-none-match": etag, "prefer": "wait=8"})
    )
    await asyncio.sleep(0.2)
    await put_profile(client, "e4", b'{"n":4}')
    changed = await poll
    assert changed.status_code == 200
    assert {"n": 4} in changed.json()


async def test_delete_writes_a_tombstone_and_the_key_is_gone(client, topics, read_all) -> None:
    await put_profile(client, "gone", b"v1")
    first = await get_when(client, "/profiles/gone", b"v1")
    poll = asyncio.create_task(
        client.get(
            "/profiles/gone", headers={"if-none-match": first.headers["etag"], "prefer": "wait=8"}
        )
    )
    await asyncio.sleep(0.2)
    deleted = await client.delete("/profiles/gone")
    assert deleted.status_code == 202
    assert (await poll).status_code == 404  # the long-poll sees the deletion
    assert (await client.get("/profiles/gone")).status_code == 404
    tombstone = [r for r in await read_all(topics["table"]) if r.key == b"gone"][-1]
    assert tombstone.value is None


async def test_bad_requests_elsewhere_do_not_disturb_a_waiting_client(http_bridge, client) -> None:
    await put_profile(client, "calm", b"v1")
    first = await get_when(client, "/profiles/calm", b"v1")
    poll = asyncio.create_task(
        client.get(
            "/profiles/calm", headers={"if-none-match": first.headers["etag"], "prefer": "wait=8"}
        )
    )
    port = http_bridge.web.port
    head = b"POST /bets HTTP/1.1\r\nHost: x\r\n"
    bad = [
        (head + b"Content-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope", True),
        (head + b"Content-Length: 99999999\r\n\r\n", True),
        (b"GARBAGE\r\n\r\n", True),
        (head + b'Content-Length: 100\r\n\r\n{"userId":', False),  # hangs up mid-body
    ]
    for raw, answered in bad:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        if answered:
            assert (await asyncio.wait_for(reader.read(200), 5)).startswith(b"HTTP/1.1 4")
        writer.close()
    assert not poll.done()
    await put_profile(client, "calm", b"v2")
    changed = await poll
    assert changed.status_code == 200
    assert changed.content == b"v2"


async def test_a_stored_value_that_is_not_strict_json_is_never_served_as_json(
    client, http_bridge, topics
) -> None:
    """Written past the edge (a raw producer), a profile of {"balance":NaN} must not reach a
    page as JSON: the key's fetch is a 502 problem, the collection carries it as text."""
    from sse_support import produce

    json_type = (("content-type", b"application/json"),)
    await produce(http_bridge, topics["table"], ['{"balance":NaN}'], key="nan", headers=json_type)
    await produce(http_bridge, topics["table"], ['{"balance":5}'], key="ok", headers=json_type)
    await get_when(client, "/profiles/ok", b'{"balance":5}')
    refused = await client.get("/profiles/nan")
    assert refused.status_code == 502
    assert refused.headers["content-type"] == PROBLEM
    assert refused.json()["type"].endswith("invalid-record")
    collection = await client.get("/profiles")
    assert collection.status_code == 200
    members = strict_json.loads(collection.content)  # the whole body is strict JSON
    assert '{"balance":NaN}' in members and {"balance": 5} in members


async def test_an_etag_from_a_recreated_topic_never_matches(
    client, http_bridge, topics, kafka_bootstrap
) -> None:
    """The same key at the same offset of a new incarnation is another record: the old ETag must
    get a 200 with the new value, not a 304."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    await put_profile(client, "eve", b'{"balance":1}')
    first = await get_when(client, "/profiles/eve", b'{"balance":1}')
    _, hub = http_bridge.kafka
    partitions = len(hub.feeds()[topics["table"]].partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topics["table"]])
        await admin.create_topics(
            [NewTopic(topics["table"], partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    await asyncio.sleep(3)  # the hub notices the new incarnation
    await put_profile(client, "eve", b'{"balance":2}')
    await get_when(client, "/profiles/eve", b'{"balance":2}')
    again = await client.get("/profiles/eve", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 200
    assert again.headers["etag"] != first.headers["etag"]
