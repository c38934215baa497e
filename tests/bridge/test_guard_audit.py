"""Audit headers and dead-lettering, through a real bridge on the real embedded broker: the
records are read back from Kafka, never inspected before they were produced."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from bridge.edge.audit import received_at_text, without_audit
from bridge.edge.dead_letters import reject_payload
from bridge.edge.record_builder import UnroutableMessage, build_message, resolver
from bridge.edge.validation import InvalidPayload, validate_payload
from bridge.model.audit_settings import audit_settings, is_audit_header
from bridge.model.message import Message, Origin

BridgeFactory = Callable[..., Awaitable[Any]]


def routes(suffix: str) -> str:
    return f"""
[audit]
client_id = "x-client"

[[routes]]
name = "bets-{suffix}"
topic = "bets-{suffix}"
key = "{{$identity}}"
schema = "schemas/bet.json"
dead_letter = "bets-{suffix}-rejected"
version = "3.1.0"
[routes.http]
method = "POST"
path = "/bets-{suffix}"

[[routes]]
name = "quiet-{suffix}"
topic = "quiet-{suffix}"
audit = false
[routes.http]
method = "POST"
path = "/quiet-{suffix}"

[[routes]]
name = "scores-{suffix}"
topic = "scores-{suffix}"
key = "{{match}}"
[routes.audit]
remote_address = false
route = "x-route"
[routes.mqtt]
topic = "stadium/{{match}}/score"
"""


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def read_topic(
    bootstrap: str, topic: str, count: int, wait_ms: int = 10_000
) -> list[Message]:
    """The first ``count`` records of ``topic``, read from Kafka by a plain consumer."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    found: list[Message] = []
    try:
        while len(found) < count:
            batches = await consumer.getmany(timeout_ms=wait_ms)
            if not batches:
                break
            for records in batches.values():
                for r in records:
                    found.append(
                        Message(r.topic, r.key, r.value, tuple(r.headers), offset=r.offset)
                    )
    finally:
        await consumer.stop()
    return found


@pytest.fixture
async def audited(bridge_factory: BridgeFactory) -> Any:
    suffix = uuid.uuid4().hex[:8]
    bridge = await bridge_factory(routes(suffix), frontends=[])
    bridge.suffix = suffix
    return bridge


ALICE = Origin("http", client_id="c-17", principal="alice", remote_address="203.0.113.9:4431")


async def test_accepted_records_carry_audit_headers(audited: Any, kafka_bootstrap: str) -> None:
    route = next(r for r in audited.config.routes if r.name.startswith("bets-"))
    value = json.dumps({"userId": "alice", "matchId": "m1", "team": "home", "amount": 5}).encode()
    body = validate_payload(route, value)
    message = build_message(route, {}, value, ALICE, resolver(ALICE, "/bets", body))
    producer, _ = audited.kafka
    await producer.send(message)
    [record] = await read_topic(kafka_bootstrap, route.topic, 1)
    headers = dict(record.headers)
    assert record.key == b"alice"
    assert headers["edgebridge-principal"] == b"alice"
    assert headers["edgebridge-protocol"] == b"http"
    assert headers["x-client"] == b"c-17"  # renamed by [audit]
    assert "edgebridge-client-id" not in headers
    assert headers["edgebridge-remote-address"] == b"203.0.113.9:4431"
    assert headers["edgebridge-received-at"] == received_at_text(ALICE.received_at).encode()
    assert headers["edgebridge-route"] == route.name.encode()
    # Lineage: this process, the product's version, the schema that validated it.
    assert headers["edgebridge-instance"] == f"{socket.gethostname()}/{os.getpid()}".encode()
    assert headers["edgebridge-route-version"] == b"3.1.0"
    assert headers["edgebridge-schema"] == b"bet.json"


async def test_audit_can_be_renamed_trimmed_or_switched_off_per_route(
    audited: Any, kafka_bootstrap: str
) -> None:
    quiet = next(r for r in audited.config.routes if r.name.startswith("quiet-"))
    scores = next(r for r in audited.config.routes if r.name.startswith("scores-"))
    device = Origin("mqtt", client_id="board-1", principal=None, remote_address="10.0.0.7:5000")
    producer, _ = audited.kafka
    await producer.send(build_message(quiet, {}, b"hello", device, resolver(device, "/quiet")))
    scored = build_message(scores, {"match": "m9"}, b"1-0", device, resolver(device, "x"))
    await producer.send(scored)
    [plain] = await read_topic(kafka_bootstrap, quiet.topic, 1)
    assert plain.headers == ()
    [score] = await read_topic(kafka_bootstrap, scores.topic, 1)
    names = [name for name, _ in score.headers]
    # No principal (anonymous: absent, not empty), no remote address (off), renamed route
    # header; no version or schema header (the route has neither).
    assert names == [
        "edgebridge-protocol",
        "x-client",
        "edgebridge-received-at",
        "x-route",
        "edgebridge-instance",
    ]
    assert without_audit(score.headers, scores.audit) == []
    assert is_audit_header("x-route", scores.audit) and not is_audit_header("content-type")


async def test_schema_rejection_goes_to_the_dead_letter_topic_with_reasons(
    audited: Any, kafka_bootstrap: str
) -> None:
    route = next(r for r in audited.config.routes if r.name.startswith("bets-"))
    bad = b'{"userId": "alice", "matchId": "m1", "team": "draw", "amount": -3}'
    before_dead = sample("edgebridge_dead_letters_total", route=route.name)
    before_rejected = sample("edgebridge_rejections_total", protocol="http", reason="schema")
    with pytest.raises(InvalidPayload) as invalid:
        validate_payload(route, bad)
    producer, _ = audited.kafka
    produced = await reject_payload(producer, route, bad, ALICE, invalid.value, address="/bets")
    assert produced is not None and produced.topic == route.dead_letter
    [record] = await read_topic(kafka_bootstrap, route.dead_letter, 1)
    headers = dict(record.headers)
    assert record.value == bad  # the payload exactly as sent
    assert headers["edgebridge-dlq-reason"] == b"schema"
    assert headers["edgebridge-dlq-route"] == route.name.encode()
    assert headers["edgebridge-dlq-topic"] == route.topic.encode()
    assert headers["edgebridge-dlq-address"] == b"/bets"
    violations = json.loads(headers["edgebridge-dlq-violations"])
    assert {v["pointer"] for v in violations} == {"/team", "/amount"}
    assert headers["edgebridge-principal"] == b"alice"
    # Nothing reached the route's own topic.
    assert await read_topic(kafka_bootstrap, route.topic, 1, wait_ms=1500) == []
    assert sample("edgebridge_dead_letters_total", route=route.name) == before_dead + 1
    assert sample("edgebridge_rejections_total", protocol="http", reason="schema") == (
        before_rejected + 1
    )


async def test_unroutable_is_dead_lettered_and_a_route_without_dlq_only_counts(
    audited: Any, kafka_bootstrap: str
) -> None:
    bets = next(r for r in audited.config.routes if r.name.startswith("bets-"))
    anonymous = Origin("sse", client_id=None, principal=None)
    with pytest.raises(UnroutableMessage) as unroutable:
        build_message(bets, {}, b"{}", anonymous, resolver(anonymous, "/bets"))
    producer, _ = audited.kafka
    assert await reject_payload(producer, bets, b"{}", anonymous, unroutable.value) is not None
    [record] = await read_topic(kafka_bootstrap, bets.dead_letter, 1)
    assert dict(record.headers)["edgebridge-dlq-reason"] == b"unroutable"
    quiet = next(r for r in audited.config.routes if r.name.startswith("quiet-"))
    assert await reject_payload(producer, quiet, b"x", anonymous, unroutable.value) is None


def test_audit_settings_merge() -> None:
    base = audit_settings({"principal": "who"})
    assert dict(base.headers)["principal"] == "who"
    assert not audit_settings(False, base).enabled
    assert not audit_settings({"enabled": False}, base).enabled
    assert audit_settings(True, base) is base
    trimmed = audit_settings({"received_at": False}, base)
    assert (
        "received_at" not in dict(trimmed.headers) and dict(trimmed.headers)["principal"] == "who"
    )
    assert received_at_text(0.25) == "1970-01-01T00:00:00.250Z"
