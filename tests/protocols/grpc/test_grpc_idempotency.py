"""The ``idempotency-key`` metadata on gRPC Produce and bound methods: one record per key on any
instance and across a SIGKILL + restart, the stored reply replayed (``idempotent-replayed``),
another request with the key refused. Real grpcio clients, real bridges on the embedded broker,
the topic read back with a plain aiokafka consumer."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from grpc_support import BridgeClient
from harness import BridgeProcess, config_text, free_port
from kafka_read import read_topic

from bridge.model.proto_bindings import compile_proto
from bridge.model.request_reply import CORRELATION_HEADER
from protocols.grpc import edgebridge_pb2 as pb
from protocols.grpc.status import retry_delay_of

pytestmark = pytest.mark.broker  # starts its own bridges: not in `make test-fast`

BET = {"userId": "u1", "amount": 5}
ODDS_PROTO = """syntax = "proto3";
package odds.v1;
message OddsUpdate { string match = 1; double home = 2; double away = 3; }
message Ack { string topic = 1; int64 offset = 2; string correlation_id = 3; }
service Odds { rpc Publish(OddsUpdate) returns (Ack); }
"""


def routes(prefix: str, port: int = 0) -> str:
    return f"""
[listeners.grpc]
host = "127.0.0.1"
port = {port}
idempotency_topic = "{prefix}-ledger"
idempotency_partitions = 4
idempotency_session_timeout_ms = 1000

[kafka.topics.{prefix}-bets]
partitions = 3

[[routes]]
name = "bet"
topic = "{prefix}-bets"
key = "{{$body.userId}}"
content_type = "application/json"

[routes.grpc]

[[routes]]
name = "partner-odds"
topic = "{prefix}-odds"
key = "{{match}}"

[routes.grpc]
proto = "odds.proto"
produce = "/odds.v1.Odds/Publish"
idempotency = "required"
"""


def write_config(tmp_path: Path, prefix: str, port: int = 0) -> Path:
    (tmp_path / "odds.proto").write_text(ODDS_PROTO)
    config = tmp_path / "routing.toml"
    config.write_text(config_text(routes(prefix, port)))
    return config


async def produce(
    client: BridgeClient, key: str, value: dict[str, object]
) -> tuple[pb.ProduceReply, dict[str, str]]:
    """A Produce with ``key``, retried while the key is in flight elsewhere (ABORTED) or its
    owner is moving (UNAVAILABLE), as a client following the RetryInfo would."""
    request = pb.ProduceRequest(route="bet", value=json.dumps(value).encode())
    for _ in range(200):
        call = client._produce(request, metadata=[("idempotency-key", key)], timeout=20)
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                raise
            assert retry_delay_of(exc) is not None, exc
            await asyncio.sleep(0.05)
            continue
        return reply, dict(await call.trailing_metadata() or ())
    raise AssertionError("still in flight")


async def test_retry_on_another_instance_replays_and_writes_one_record(
    bridge_factory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"gi-{uuid.uuid4().hex[:8]}"
    write_config(tmp_path, prefix)
    first = await bridge_factory(routes(prefix), frontends=["grpc"], directory=tmp_path)
    second = await bridge_factory(routes(prefix), frontends=["grpc"], directory=tmp_path)
    key = uuid.uuid4().hex
    ports = [b.frontend("grpc").port for b in (first, second)]
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as a,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as b,
    ):
        original, trailers = await produce(BridgeClient(a), key, BET)
        assert "idempotent-replayed" not in trailers
        # The same bet re-serialised (members in another order) on the other instance.
        retry, trailers = await produce(BridgeClient(b), key, {"amount": 5, "userId": "u1"})
        assert trailers.get("idempotent-replayed") == "true"
        assert retry == original
        for channel in (a, b):  # one of them forwards: the owner's status comes back as is
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await produce(BridgeClient(channel), key, {**BET, "amount": 6})
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "different request" in (refused.value.details() or "")
        # Both instances answer every retry, whichever owns the key: one of them forwarded.
        for channel in (a, b):
            again, trailers = await produce(BridgeClient(channel), key, BET)
            assert again == original and trailers.get("idempotent-replayed") == "true"
    found = await read_topic(kafka_bootstrap, f"{prefix}-bets")
    assert len(found) == 1
    assert (found[0].partition, found[0].offset) == (original.partition, original.offset)
    assert dict(found[0].headers)[CORRELATION_HEADER].decode() == original.correlation_id


async def test_concurrent_calls_on_two_instances_produce_one_record(
    bridge_factory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"gc-{uuid.uuid4().hex[:8]}"
    write_config(tmp_path, prefix)
    bridges = [
        await bridge_factory(routes(prefix), frontends=["grpc"], directory=tmp_path)
        for _ in range(2)
    ]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{b.frontend('grpc').port}") for b in bridges]
    key = uuid.uuid4().hex
    request = pb.ProduceRequest(route="bet", value=json.dumps(BET).encode())
    try:
        calls = [
            BridgeClient(channels[i % 2])._produce(
                request, metadata=[("idempotency-key", key)], timeout=20
            )
            for i in range(30)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        trailers = [
            dict(await c.trailing_metadata() or ())
            for c, o in zip(calls, outcomes, strict=True)
            if not isinstance(o, BaseException)
        ]
    finally:
        for channel in channels:
            await channel.close()
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    for error in refused:  # only "in flight, retry" refusals, each with its RetryInfo
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE), error
        assert retry_delay_of(error) is not None
    assert sum(1 for t in trailers if "idempotent-replayed" not in t) == 1
    assert len({o.offset for o in outcomes if not isinstance(o, BaseException)}) == 1
    assert len(await read_topic(kafka_bootstrap, f"{prefix}-bets")) == 1


async def test_bound_method_replays_across_a_sigkill_and_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"gr-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(tmp_path, prefix, port)
    pool, _ = compile_proto(tmp_path / "odds.proto")
    update_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("odds.v1.OddsUpdate"))
    ack_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("odds.v1.Ack"))
    update = update_cls(match="7", home=1.5, away=2.5)
    key = uuid.uuid4().hex
    bridge = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
    restarted: BridgeProcess | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            publish = channel.unary_unary(
                "/odds.v1.Odds/Publish",
                request_serializer=update_cls.SerializeToString,
                response_deserializer=ack_cls.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await publish(update, timeout=10)  # the route requires a key
            assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            first = await publish(update, metadata=[("idempotency-key", key)], timeout=20)
        bridge.stop(signal.SIGKILL)
        restarted = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            publish = channel.unary_unary(
                "/odds.v1.Odds/Publish",
                request_serializer=update_cls.SerializeToString,
                response_deserializer=ack_cls.FromString,
            )
            call = publish(update, metadata=[("idempotency-key", key)], timeout=20)
            again = await call
            assert dict(await call.trailing_metadata())["idempotent-replayed"] == "true"
            assert again == first
    finally:
        bridge.kill()
        if restarted is not None:
            restarted.stop()
    found = await read_topic(kafka_bootstrap, f"{prefix}-odds")
    assert len(found) == 1 and found[0].offset == first.offset
    assert json.loads(found[0].value) == {"match": "7", "home": 1.5, "away": 2.5}
