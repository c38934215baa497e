"""A topic deleted and created again under a running bridge: a gRPC Subscribe is told with a
RESET event (the hub's reset signal), then gets the new incarnation's records; an id of the old
incarnation resumes with a RESET from the new start. Real broker, real bridge, grpcio."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from grpc_support import BridgeClient, events

from bridge.model.position import Position
from protocols.grpc import edgebridge_pb2 as pb

ROUTES = """
[listeners.grpc]
idempotency_session_timeout_ms = 1000  # the ledger group joins in ~0.5 s (not ~3 s)
host = "127.0.0.1"
port = 0

[[routes]]
name = "odds"
topic = "{topic}"

[routes.grpc]
"""


async def recreate(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


@pytest.fixture
async def odds(bridge_factory, new_topic) -> AsyncIterator[tuple[BridgeClient, str]]:  # type: ignore[no-untyped-def]
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["grpc"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bridge.frontend('grpc').port}") as channel:
        yield BridgeClient(channel), topic


async def until(stream: AsyncIterator[pb.Event], count: int) -> list[pb.Event]:
    found: list[pb.Event] = []
    async for event in stream:
        if event.kind != pb.Event.MARKER:
            found.append(event)
            if len(found) >= count:
                break
    return found


async def test_a_live_stream_gets_a_reset_then_the_new_incarnation(odds, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    client, topic = odds
    call = client.subscribe("odds")
    assert (await call.read()).kind == pb.Event.MARKER  # subscribed
    stream = events(call)
    await client.produce("odds", b"a1")
    await client.produce("odds", b"a2")
    before = await until(stream, 2)
    await recreate(kafka_bootstrap, topic)
    reset = await until(stream, 1)  # noticed by the hub on its own
    await client.produce("odds", b"b1")
    await client.produce("odds", b"b2")
    after = await until(stream, 2)
    call.cancel()
    assert [e.value for e in before] == [b"a1", b"a2"]
    assert (reset[0].kind, reset[0].reason) == (pb.Event.RESET, "reset")
    assert [e.value for e in after] == [b"b1", b"b2"]
    old, new = Position.decode(before[0].id, None), Position.decode(after[0].id, None)
    assert old.epoch and new.epoch and old.epoch != new.epoch
    assert new.to_dict() == {0: 1}  # the first record of the new incarnation


async def test_an_old_id_resumes_with_a_reset_from_the_new_start(odds, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    client, topic = odds
    await client.produce("odds", b"old")
    call = client.subscribe("odds")
    marker = await call.read()
    call.cancel()
    await recreate(kafka_bootstrap, topic)
    await client.produce("odds", b"new-1")
    resumed = client.subscribe("odds", last_id=marker.id)
    got = await until(events(resumed), 2)
    resumed.cancel()
    assert (got[0].kind, got[0].reason) == (pb.Event.RESET, "reset")
    assert Position.decode(got[0].id, None).to_dict() == {0: 0}
    assert got[1].value == b"new-1"
