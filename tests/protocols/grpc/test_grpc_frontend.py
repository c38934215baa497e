"""The gRPC front-end against a real bridge on the embedded broker, with real grpcio clients:
produce read back by a plain Kafka consumer, every refusal's status (and nothing produced),
exact resume by last-message-id, snapshot-then-live, request-reply, deadlines, health and
reflection. One bridge serves the module; the TLS and slow-consumer tests start a second one."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_support import BridgeClient, events, records
from harness import start_bridge
from kafka_read import read_topic

from bridge.edge.tokens import mint_token
from bridge.model.position import Position
from bridge.process.runtime import Bridge
from protocols.grpc import edgebridge_pb2 as pb
from protocols.grpc.status import violations_of

SECRET = "grpc-test-secret-that-is-long-enough-for-hs256"
BET_SCHEMA = {
    "type": "object",
    "required": ["userId", "amount"],
    "properties": {
        "userId": {"type": "string", "minLength": 1},
        "amount": {"type": "number", "exclusiveMinimum": 0},
    },
    "additionalProperties": False,
}

ODDS_SCHEMA = {
    "type": "object",
    "required": ["match", "home", "away"],
    "properties": {
        "match": {"type": "string", "minLength": 1},
        "home": {"type": "number", "minimum": 1},
        "away": {"type": "number", "minimum": 1},
    },
}
ODDS_PROTO = """syntax = "proto3";
package odds.v1;
message OddsUpdate { string match = 1; double home = 2; double away = 3; }
message Ack { string topic = 1; int64 offset = 2; string note = 3; }
service Odds { rpc Publish(OddsUpdate) returns (Ack); }
"""


def routes(prefix: str, listener: str = "") -> str:
    return f"""
[guard]
type = "jwt"
secret = "{SECRET}"

[listeners.grpc]
idempotency_session_timeout_ms = 1000  # the ledger group joins in ~0.5 s (not ~3 s)
host = "127.0.0.1"
port = 0
{listener}

[kafka.topics.{prefix}-odds]
partitions = 3

[kafka.topics.{prefix}-profiles]
compact = true

[[routes]]
name = "bet"
topic = "{prefix}-bets"
key = "{{$body.userId}}"
schema = "bet.json"

[routes.grpc]

[routes.access]
publish = ["bettor"]

[[routes]]
name = "odds"
topic = "{prefix}-odds"
key = "{{match}}"

[routes.grpc]

[[routes]]
name = "profile"
topic = "{prefix}-profiles"
key = "{{user}}"

[routes.grpc]
start = "snapshot"

[routes.access]
subscribe = ["bettor"]
identity = "user"

[[routes]]
name = "ask"
topic = "{prefix}-asks"
key = "{{match}}"

[routes.grpc]
reply_topic = "{prefix}-answers"
reply_wait_s = 5

[[routes]]
name = "partner-odds"
topic = "{prefix}-partner"
key = "{{match}}"
schema = "odds.json"

[routes.grpc]
proto = "odds.proto"
produce = "/odds.v1.Odds/Publish"

[[routes]]
name = "mqtt-only"
topic = "{prefix}-hidden"

[routes.mqtt]
topic = "hidden"
"""


class Env:
    def __init__(self, bridge: Bridge, prefix: str, bootstrap: str, client: BridgeClient) -> None:
        self.bridge = bridge
        self.prefix = prefix
        self.bootstrap = bootstrap
        self.client = client
        self.port: int = bridge.frontend("grpc").port

    def token(self, sub: str, *roles: str, ttl_s: float = 600) -> str:
        assert self.bridge.config.guard_settings is not None
        return mint_token(self.bridge.config.guard_settings, sub, roles, ttl_s=ttl_s)


@pytest.fixture(scope="module")
async def env(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    directory = tmp_path_factory.mktemp("grpc")
    (directory / "bet.json").write_text(json.dumps(BET_SCHEMA))
    (directory / "odds.json").write_text(json.dumps(ODDS_SCHEMA))
    (directory / "odds.proto").write_text(ODDS_PROTO)
    prefix = f"g{uuid.uuid4().hex[:8]}"
    bridge = await start_bridge(routes(prefix), kafka_bootstrap, ["grpc"], directory=directory)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{bridge.frontend('grpc').port}")
    try:
        yield Env(bridge, prefix, kafka_bootstrap, BridgeClient(channel))
    finally:
        await channel.close()
        await bridge.stop()


async def refused(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- produce -----------------------------------------------------------------------------------


async def test_produce_is_read_back_by_a_plain_consumer_with_audit_headers(env: Env) -> None:
    token = env.token("alice", "bettor")
    bet = json.dumps({"userId": "alice", "amount": 12.5}).encode()
    reply = await env.client.produce("bet", bet, token=token)
    assert reply.topic == f"{env.prefix}-bets"
    stored = [r for r in await read_topic(env.bootstrap, reply.topic) if r.offset == reply.offset]
    assert len(stored) == 1
    record = stored[0]
    assert (record.key, record.value) == (b"alice", bet)
    headers = dict(record.headers)
    assert headers["correlation-id"] == reply.correlation_id.encode()
    assert b"grpc" in headers.values()  # the audit protocol header
    assert b"alice" in headers.values()  # the audit principal header


async def test_every_refusal_has_its_status_and_produces_nothing(env: Env) -> None:
    client = env.client
    before = len(await read_topic(env.bootstrap, f"{env.prefix}-bets"))
    good = json.dumps({"userId": "bob", "amount": 3}).encode()

    no_token = await refused(client.produce("bet", good))
    assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "requires a token" in no_token.details()

    forged = await refused(client.produce("bet", good, token="not.a.jwt"))
    assert forged.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token refused" in forged.details()

    expired = await refused(
        client.produce("bet", good, token=env.token("bob", "bettor", ttl_s=-60))
    )
    assert expired.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in expired.details()

    wrong_role = await refused(client.produce("bet", good, token=env.token("bob", "viewer")))
    assert wrong_role.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "bettor" in wrong_role.details()

    token = env.token("bob", "bettor")
    bad = json.dumps({"userId": "", "amount": -1, "extra": True}).encode()
    invalid = await refused(client.produce("bet", bad, token=token))
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    pointers = {pointer for pointer, _ in violations_of(invalid)}
    assert {"/userId", "/amount"} <= pointers
    assert any(p in ("", "/") for p in pointers)  # additionalProperties is about the document

    nan = await refused(client.produce("bet", b'{"userId": "bob", "amount": NaN}', token=token))
    assert nan.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [p for p, _ in violations_of(nan)] == ["/amount"]

    missing = await refused(client.produce("odds", b"1.5"))  # no {match} parameter
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(missing) == [("/params/match", "required by the route")]

    unknown = await refused(client.produce("nope", good, token=token))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    hidden = await refused(client.produce("mqtt-only", good, token=token))
    assert hidden.code() == grpc.StatusCode.NOT_FOUND  # a route without [routes.grpc]

    no_reply_topic = await refused(client.request("odds", b"1", {"match": "1"}))
    assert no_reply_topic.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Then one accepted bet: the topic holds it and nothing of the refused calls.
    accepted = await client.produce("bet", good, token=token)
    after = await read_topic(env.bootstrap, f"{env.prefix}-bets")
    assert len(after) == before + 1
    assert after[-1].offset == accepted.offset and after[-1].value == good


async def test_produce_stream_answers_in_order_and_stops_at_a_refusal(env: Env) -> None:
    token = env.token("carol", "bettor")
    before = len(await read_topic(env.bootstrap, f"{env.prefix}-bets"))
    bets = [json.dumps({"userId": "carol", "amount": i + 1}).encode() for i in range(50)]
    bad = json.dumps({"userId": "carol", "amount": -1}).encode()
    later = [json.dumps({"userId": "carol", "amount": 99}).encode()] * 5

    async def requests() -> AsyncIterator[pb.ProduceRequest]:
        for value in [*bets, bad, *later]:
            yield pb.ProduceRequest(route="bet", value=value)

    call = env.client.channel.stream_stream(
        "/edgebridge.v1.Bridge/ProduceStream",
        request_serializer=pb.ProduceRequest.SerializeToString,
        response_deserializer=pb.ProduceReply.FromString,
    )(requests(), metadata=[("authorization", f"Bearer {token}")], timeout=30)
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for reply in call:
            replies.append(reply)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [p for p, _ in violations_of(ended.value)] == ["/amount"]
    assert len(replies) == 50  # one per accepted request, in order; nothing after the refusal
    after = await read_topic(env.bootstrap, f"{env.prefix}-bets")
    assert len(after) == before + 50
    stored = {(r.partition, r.offset): r.value for r in after}
    assert [stored[(r.partition, r.offset)] for r in replies] == bets


# -- subscribe ---------------------------------------------------------------------------------


async def produce_odds(env: Env, match: str, values: list[bytes]) -> None:
    for value in values:
        await env.client.produce("odds", value, {"match": match})


async def test_subscribe_resumes_exactly_from_last_message_id(env: Env) -> None:
    first = [f"a{i}".encode() for i in range(30)]
    second = [f"b{i}".encode() for i in range(30)]
    call = env.client.subscribe("odds", {"match": "7"})
    marker = await call.read()
    assert marker.kind == pb.Event.MARKER and marker.id
    # Interleaved with another match's records (same topic, 3 partitions): those are not ours.
    await asyncio.gather(produce_odds(env, "7", first), produce_odds(env, "8", [b"x"] * 10))
    got = await records(call, 10)
    assert [e.value for e in got] == first[:10]
    assert all(e.key == b"7" for e in got)
    call.cancel()

    # Resume after the tenth record: exactly the twentieth onwards, then live, one by one.
    resumed = env.client.subscribe("odds", {"match": "7"}, last_id=got[-1].id)
    await produce_odds(env, "7", second)
    rest = await records(resumed, 50)
    assert [e.value for e in rest] == first[10:] + second
    assert len({e.id for e in rest}) == len(rest)
    # Each id is where a reader is after its record: resuming at any of them continues there.
    again = env.client.subscribe("odds", {"match": "7"}, last_id=rest[24].id)
    assert [e.value for e in await records(again, 25)] == [e.value for e in rest[25:]]
    resumed.cancel()
    again.cancel()


async def test_the_marker_id_resumes_a_client_that_got_no_record(env: Env) -> None:
    call = env.client.subscribe("odds", {"match": "9"})
    marker = await call.read()
    call.cancel()
    await produce_odds(env, "9", [b"while-away-1", b"while-away-2"])
    resumed = env.client.subscribe("odds", {"match": "9"}, last_id=marker.id)
    assert [e.value for e in await records(resumed, 2)] == [b"while-away-1", b"while-away-2"]
    resumed.cancel()


async def test_an_id_of_another_stream_or_beyond_the_topic_is_invalid_argument(env: Env) -> None:
    call = env.client.subscribe("odds", {"match": "7"})
    marker = await call.read()
    call.cancel()
    other = env.client.subscribe("odds", {"match": "8"}, last_id=marker.id)
    error = await refused(other.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "last-message-id" in error.details()
    position = Position.decode(marker.id, None)
    ahead = Position({p: o + 1000 for p, o in position.items()}, position.epoch)
    from bridge.model.route_selection import selection_tag as channel_tag

    route = next(r for r in env.bridge.config.routes if r.name == "odds")
    beyond = env.client.subscribe(
        "odds", {"match": "7"}, last_id=ahead.encode(channel_tag(route, {"match": "7"}))
    )
    error = await refused(beyond.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "beyond the end" in error.details()


async def test_snapshot_then_live_for_a_compacted_route_with_identity(env: Env) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await producer.start()
    topic = f"{env.prefix}-profiles"
    try:
        await producer.send_and_wait(topic, b'{"v":1}', key=b"carol")
        await producer.send_and_wait(topic, b'{"v":2}', key=b"carol")
        await producer.send_and_wait(topic, b'{"v":9}', key=b"dave")
    finally:
        await producer.stop()
    token = env.token("carol", "bettor")
    denied = env.client.subscribe("profile", {"user": "dave"}, token=token)
    assert (await refused(denied.read())).code() == grpc.StatusCode.PERMISSION_DENIED
    anonymous = env.client.subscribe("profile", {"user": "carol"})
    assert (await refused(anonymous.read())).code() == grpc.StatusCode.UNAUTHENTICATED

    call = env.client.subscribe("profile", {"user": "carol"}, token=token)
    # The snapshot is read from the table feed, which may still be loading the topic.
    snapshot = []
    async for event in events(call):
        if event.kind == pb.Event.MARKER:
            break
        snapshot.append(event)
    assert [(e.kind, e.key, e.value) for e in snapshot] == [
        (pb.Event.SNAPSHOT, b"carol", b'{"v":2}')
    ]
    await env.client.produce("profile", b'{"v":3}', {"user": "carol"}, token=token)
    live = await records(call, 1)
    assert live[0].value == b'{"v":3}' and live[0].id
    call.cancel()


async def test_start_not_allowed_by_the_route_is_invalid_argument(env: Env) -> None:
    call = env.client.subscribe("odds", {"match": "7"}, start="earliest")
    error = await refused(call.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "use one of: live" in error.details()


# -- request-reply and deadlines ---------------------------------------------------------------


async def test_request_is_answered_from_the_reply_topic(env: Env) -> None:
    asks, answers = f"{env.prefix}-asks", f"{env.prefix}-answers"
    consumer = AIOKafkaConsumer(
        asks, bootstrap_servers=env.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await consumer.start()
    await producer.start()

    async def answer() -> None:
        async for record in consumer:
            headers = dict(record.headers)
            assert headers["reply-to"] == answers.encode()
            await producer.send_and_wait(
                answers,
                b"answer to " + record.value,
                headers=[("correlation-id", headers["correlation-id"]), (":status", b"201")],
            )

    responder = asyncio.create_task(answer())
    try:
        reply = await env.client.request("ask", b"q1", {"match": "4"}, timeout=10)
        assert (reply.value, reply.status) == (b"answer to q1", 201)
    finally:
        responder.cancel()
        await consumer.stop()
        await producer.stop()


async def test_request_without_an_answer_ends_at_the_callers_deadline(env: Env) -> None:
    error = await refused(env.client.request("ask", b"nobody answers", {"match": "5"}, timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- standard services -------------------------------------------------------------------------


async def test_health_says_serving(env: Env) -> None:
    stub = health_pb2_grpc.HealthStub(env.client.channel)
    for service in ("", "edgebridge.v1.Bridge"):
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services_and_describes_the_bridge(env: Env) -> None:
    def reflect() -> tuple[set[str], set[str]]:
        # grpcio-reflection's client is synchronous: its own channel, in a thread, while the
        # bridge serves in this event loop.
        with grpc.insecure_channel(f"127.0.0.1:{env.port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            described = database.FindFileContainingSymbol("edgebridge.v1.Bridge")
            return services, {m.name for s in described.service for m in s.method}

    services, methods = await asyncio.to_thread(reflect)
    assert {
        "edgebridge.v1.Bridge",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert methods == {"Produce", "ProduceStream", "Subscribe", "Request"}


async def test_a_stream_ends_unauthenticated_when_its_token_expires(env: Env) -> None:
    token = env.token("erin", "bettor", ttl_s=1)
    call = env.client.subscribe("profile", {"user": "erin"}, token=token)
    seen = [event async for event in events_until_error(call)]
    assert seen and seen[-1] == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (await call.details())


async def events_until_error(call) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    try:
        async for event in events(call):
            yield event
    except grpc.aio.AioRpcError as error:
        yield error.code()


async def test_a_bound_proto_method_produces_the_route_json(env: Env) -> None:
    from google.protobuf import message_factory

    binding = next(r for r in env.bridge.config.routes if r.name == "partner-odds").grpc_produce
    assert binding is not None
    pool = binding.pool
    update_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("odds.v1.OddsUpdate"))
    ack_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("odds.v1.Ack"))
    publish = env.client.channel.unary_unary(
        "/odds.v1.Odds/Publish",
        request_serializer=update_cls.SerializeToString,
        response_deserializer=ack_cls.FromString,
    )
    ack = await publish(update_cls(match="5", home=1.5, away=2.25), timeout=10)
    assert ack.topic == f"{env.prefix}-partner" and ack.note == ""
    stored = [r for r in await read_topic(env.bootstrap, ack.topic) if r.offset == ack.offset]
    assert [(r.key, json.loads(r.value)) for r in stored] == [
        (b"5", {"match": "5", "home": 1.5, "away": 2.25})
    ]
    # The route's schema applies to the message's JSON: refused with its pointer, nothing written.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await publish(update_cls(match="5", home=0.5, away=2.0), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [p for p, _ in violations_of(caught.value)] == ["/home"]
    assert len(await read_topic(env.bootstrap, ack.topic)) == 1


async def test_a_subscribe_deadline_ends_the_call_and_frees_its_subscription(env: Env) -> None:
    service = env.bridge.frontend("grpc").service
    call = env.client._subscribe(
        pb.SubscribeRequest(route="odds", params={"match": "deadline"}), timeout=0.5
    )
    assert (await call.read()).kind == pb.Event.MARKER
    assert len(service.streams) >= 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):  # the server side ends a moment after the client's deadline
        if not any(s.channel.params == {"match": "deadline"} for s in service.streams):
            break
        await asyncio.sleep(0.02)
    assert not any(s.channel.params == {"match": "deadline"} for s in service.streams)
    assert ("odds", (("match", "deadline"),)) not in service.channels
