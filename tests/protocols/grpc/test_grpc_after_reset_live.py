"""A route with ``after_reset = "live"``: a gRPC Subscribe resuming with an id of the topic's
old incarnation gets a RESET whose id is the live position, then only records produced after
it. Real broker, real bridge, grpcio."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from grpc_support import BridgeClient, events

from bridge.model.position import Position
from protocols.grpc import edgebridge_pb2 as pb

ROUTES = """
[listeners.grpc]
host = "127.0.0.1"
port = 0

[[routes]]
name = "odds"
topic = "{topic}"
after_reset = "live"

[routes.grpc]
"""


async def test_an_old_id_resumes_live_after_a_reset(
    bridge_factory, new_topic, kafka_bootstrap
) -> None:
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["grpc"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bridge.frontend('grpc').port}") as channel:
        client = BridgeClient(channel)
        await client.produce("odds", b"old")
        call = client.subscribe("odds")
        marker = await call.read()
        call.cancel()
        _, hub = bridge.kafka
        old_epoch = hub.feeds()[topic].epoch
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        for _ in range(100):  # the hub notices the new incarnation (every 2 s)
            if hub.feeds()[topic].epoch not in (0, old_epoch):
                break
            await asyncio.sleep(0.05)
        await client.produce("odds", b"x1")  # before the client comes back: not sent
        await client.produce("odds", b"x2")
        await hub.feeds()[topic].sync()
        resumed = client.subscribe("odds", last_id=marker.id)
        stream = events(resumed)
        reset = await anext(stream)
        await client.produce("odds", b"c1")
        following = await anext(stream)
        resumed.cancel()
    assert (reset.kind, reset.reason) == (pb.Event.RESET, "reset")
    assert Position.decode(reset.id, None).to_dict() == {0: 2}  # the live end then
    assert following.value == b"c1"


pytestmark = pytest.mark.broker
