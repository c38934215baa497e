"""The gRPC mapping of the idempotency ledger without a broker: what a new owner stores for a
claim whose owner died after producing (the reply that call would have had, for its method),
and the statuses of the verdicts."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from bridge.edge.idempotency import (
    Entry,
    encode_claim,
    encode_complete,
    fingerprint,
    fingerprint_digest,
)
from bridge.model.message import Message
from protocols.grpc import edgebridge_pb2 as pb
from protocols.grpc.idempotency import rebuild_with, verdict
from protocols.grpc.service import PRODUCE_METHOD
from protocols.grpc.status import Refusal


def ack_class() -> type:
    """A user's reply type with only some of the coordinate fields (and one of another type)."""
    file = descriptor_pb2.FileDescriptorProto(name="ack.proto", package="t", syntax="proto3")
    ack = file.message_type.add(name="Ack")
    kinds = descriptor_pb2.FieldDescriptorProto
    string, int64 = kinds.TYPE_STRING, kinds.TYPE_INT64
    ack.field.add(name="topic", number=1, type=string)
    ack.field.add(name="offset", number=2, type=int64)
    ack.field.add(name="partition", number=3, type=string)  # not an int: left alone
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Ack"))


def test_a_recovered_claim_rebuilds_the_reply_of_its_method() -> None:
    ack = ack_class()
    rebuild = rebuild_with({PRODUCE_METHOD: pb.ProduceReply, "/t.S/Publish": ack})
    record = Message("bets", b"k", b"{}", (("correlation-id", b"c-1"),), partition=2, offset=41)
    assert pb.ProduceReply.FromString(rebuild(record, PRODUCE_METHOD)) == pb.ProduceReply(
        topic="bets", partition=2, offset=41, correlation_id="c-1"
    )
    user = ack.FromString(rebuild(record, "/t.S/Publish"))
    assert (user.topic, user.offset, user.partition) == ("bets", 41, "")
    assert rebuild(record, "/gone.S/Method") == b""  # a method no longer bound


def test_verdicts_are_statuses() -> None:
    fp = fingerprint("produce", "/m?[]", None, b"1")
    digest = fingerprint_digest(fp)
    claim = b"c" * 16
    pending = Entry.decode(encode_claim(claim, digest, 2**40, "bets", {}))
    with pytest.raises(Refusal) as in_flight:
        verdict(pending, fp)
    assert in_flight.value.code == grpc.StatusCode.ABORTED and in_flight.value.retry_s > 0
    done = Entry.decode(encode_complete(claim, digest, 2**40, b"stored"))
    assert verdict(done, fp) == b"stored"
    with pytest.raises(Refusal) as other:
        verdict(done, fingerprint("produce", "/m?[]", None, b"2"))
    assert other.value.code == grpc.StatusCode.FAILED_PRECONDITION
