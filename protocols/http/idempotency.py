"""Idempotency-Key over HTTP: the mapping onto the protocol-neutral ledger.

The ledger itself (claims, completions, replay, ownership, recovery) lives in
``bridge/edge/idempotency.py`` and is shared with the other front-ends. Here: an HTTP response as
the ledger's opaque outcome bytes (status u16, header count u16, each name and value as u16
length + latin-1, then the body: the same layout the ledger stored before it was split, so
existing ledger topics keep replaying), the verdicts as problem documents (409 + Retry-After,
422), ``Idempotent-Replayed: true`` on a replay, and the ``202`` a recovered claim stands for.
"""

from __future__ import annotations

import json
import struct

from bridge.edge.idempotency import (
    CLAIM_HEADER,
    COMPLETE,
    DEFAULT_PARTITIONS,
    DEFAULT_TOPIC,
    MAX_KEY_LENGTH,
    PENDING,
    Claimed,
    Entry,
    IdempotencyStore,
    InFlight,
    LedgerPartition,
    LedgerUnavailable,
    Local,
    OtherRequest,
    Remote,
    correlation_id,
    decide,
    encode_claim,
    encode_release,
    fingerprint,
    fingerprint_digest,
    parse_key,
    scope_key,
)
from bridge.edge.idempotency import encode_complete as _encode_complete
from bridge.model.message import Message
from bridge.model.request_reply import CORRELATION_HEADER
from bridge.web.problem import Problem
from protocols.http.asgi import Response

__all__ = [
    "CLAIM_HEADER",
    "COMPLETE",
    "DEFAULT_PARTITIONS",
    "DEFAULT_TOPIC",
    "MAX_KEY_LENGTH",
    "PENDING",
    "Claimed",
    "Entry",
    "IdempotencyStore",
    "LedgerPartition",
    "LedgerUnavailable",
    "Local",
    "Remote",
    "accepted",
    "correlation_id",
    "decode_response",
    "encode_claim",
    "encode_complete",
    "encode_release",
    "encode_response",
    "fingerprint",
    "fingerprint_digest",
    "parse_key",
    "recovered_response",
    "scope_key",
    "verdict",
]

_U16 = struct.Struct(">H")


def encode_response(response: Response) -> bytes:
    """An HTTP response as the ledger's outcome bytes."""
    parts = [_U16.pack(response.status), _U16.pack(len(response.headers))]
    for name, value in response.headers:
        for text in (name, value):
            raw = text.encode("latin-1")
            parts += [_U16.pack(len(raw)), raw]
    parts.append(response.body)
    return b"".join(parts)


def decode_response(outcome: bytes) -> Response:
    (status,) = _U16.unpack_from(outcome, 0)
    (count,) = _U16.unpack_from(outcome, 2)
    at = 4
    headers = []
    for _ in range(count):
        pair = []
        for _ in range(2):
            (size,) = _U16.unpack_from(outcome, at)
            pair.append(outcome[at + 2 : at + 2 + size].decode("latin-1"))
            at += 2 + size
        headers.append((pair[0], pair[1]))
    return Response(status, headers, outcome[at:])


def encode_complete(claim: bytes, fp: bytes, until_ms: int, response: Response) -> bytes:
    """A ledger completion holding an HTTP response."""
    return _encode_complete(claim, fp, until_ms, encode_response(response))


def verdict(entry: Entry, fp: str) -> Response:
    """What a request whose key is already in the ledger gets: the stored response replayed,
    or a problem document."""
    try:
        outcome = decide(entry, fp)
    except OtherRequest as exc:
        raise Problem(
            422,
            "idempotency-key-reused",
            "this Idempotency-Key was used for a different request; use a new key for a new one",
        ) from exc
    except InFlight as exc:
        raise Problem(
            409,
            "idempotency-in-flight",
            "a request with this Idempotency-Key is still being processed; retry shortly",
            headers={"retry-after": "1"},
        ) from exc
    stored = decode_response(outcome)
    return Response(stored.status, [*stored.headers, ("idempotent-replayed", "true")], stored.body)


def recovered_response(record: Message, correlation: str, location: str) -> Response:
    """The answer a claim's record stands for when its owner died before storing one: the
    ``202`` a produce without a reply wait gives, or the reply ``Location``."""
    if location:
        body = json.dumps({"correlationId": correlation, "location": location}).encode()
        return Response.json(202, body, [("location", location), (CORRELATION_HEADER, correlation)])
    assert record.partition is not None and record.offset is not None
    return accepted(record.topic, record.partition, record.offset, correlation)


def accepted(topic: str, partition: int, offset: int, correlation: str) -> Response:
    """The ``202`` of a produce that waits for no reply: where the record is, and its
    correlation id (the body ``json.dumps`` would write, formatted without it when both
    strings need no escaping: a topic name and a generated id never do)."""
    if _plain(topic) and _plain(correlation):
        body = (
            f'{{"topic": "{topic}", "partition": {partition}, "offset": {offset}, '
            f'"correlationId": "{correlation}"}}'
        ).encode()
    else:
        acked = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "correlationId": correlation,
        }
        body = json.dumps(acked).encode()
    return Response.json(202, body, [(CORRELATION_HEADER, correlation)])


def _plain(text: str) -> bool:
    return text.isascii() and text.replace("-", "").replace("_", "").replace(".", "").isalnum()
