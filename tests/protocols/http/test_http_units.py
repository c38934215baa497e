"""The sans-io parts of the HTTP front-end: the idempotency ledger's decisions, Prefer, keys,
ETags, reply mapping and problem documents. No sockets: these pin the rules themselves."""

from __future__ import annotations

import json

import pytest

from bridge.model.message import Message
from bridge.web.problem import Problem
from protocols.http.asgi import Response
from protocols.http.fetch import matches_etag
from protocols.http.idempotency import (
    COMPLETE,
    PENDING,
    Ledger,
    correlation_id,
    encode_response,
    fingerprint,
    parse_key,
    scope_key,
)
from protocols.http.prefer import parse_prefer
from protocols.http.replies import reply_response

KEY = scope_key("bet", "alice", "k1")


def claim(name: str, at: int, lease_ms: int = 1000, fp: str = "fp") -> bytes:
    return json.dumps(
        {"kind": "claim", "claim": name, "fp": fp, "at": at, "lease_until": at + lease_ms}
    ).encode()


def complete(name: str, at: int, ttl_ms: int = 10_000, status: int = 202) -> bytes:
    response = encode_response(Response(status, [("x", "y")], b"body"))
    return json.dumps(
        {
            "kind": "complete",
            "claim": name,
            "at": at,
            "expires_at": at + ttl_ms,
            "response": response,
        }
    ).encode()


def release(name: str) -> bytes:
    return json.dumps({"kind": "release", "claim": name, "at": 0}).encode()


def test_first_claim_in_log_order_wins_and_later_claims_lose() -> None:
    ledger = Ledger()
    ledger.apply(KEY, claim("a", at=100))
    ledger.apply(KEY, claim("b", at=101))
    entry = ledger.lookup(KEY, now_ms=150)
    assert entry is not None and (entry.claim, entry.state) == ("a", PENDING)


def test_a_losers_complete_or_release_changes_nothing() -> None:
    ledger = Ledger()
    ledger.apply(KEY, claim("a", at=100))
    ledger.apply(KEY, claim("b", at=101))
    ledger.apply(KEY, complete("b", at=102))
    ledger.apply(KEY, release("b"))
    entry = ledger.lookup(KEY, now_ms=150)
    assert entry is not None and (entry.claim, entry.state) == ("a", PENDING)


def test_complete_stores_the_response_until_it_expires() -> None:
    ledger = Ledger()
    ledger.apply(KEY, claim("a", at=100))
    ledger.apply(KEY, complete("a", at=120, ttl_ms=1000))
    entry = ledger.lookup(KEY, now_ms=500)
    assert entry is not None and entry.state == COMPLETE
    assert entry.response == Response(202, [("x", "y")], b"body")
    assert entry.fingerprint == "fp"  # kept from the claim
    assert ledger.lookup(KEY, now_ms=1120) is None
    # After expiry a new claim takes the key.
    ledger.apply(KEY, claim("c", at=1200))
    assert ledger.lookup(KEY, now_ms=1201).claim == "c"


def test_a_pending_claim_is_taken_over_only_after_its_lease() -> None:
    ledger = Ledger()
    ledger.apply(KEY, claim("a", at=100, lease_ms=1000))
    ledger.apply(KEY, claim("b", at=900))
    assert ledger.lookup(KEY, now_ms=950).claim == "a"
    ledger.apply(KEY, claim("c", at=1100))  # decided by the record's time, not the reader's
    assert ledger.lookup(KEY, now_ms=5).claim == "c"


def test_release_frees_the_key_and_tombstone_forgets_it() -> None:
    ledger = Ledger()
    ledger.apply(KEY, claim("a", at=100))
    ledger.apply(KEY, release("a"))
    assert ledger.lookup(KEY, now_ms=101) is None
    ledger.apply(KEY, claim("b", at=102))
    ledger.apply(KEY, None)
    assert ledger.lookup(KEY, now_ms=103) is None


def test_rebuilding_from_the_log_decides_exactly_as_live() -> None:
    log = [claim("a", 100), claim("b", 101), complete("a", 130), claim("c", 140), release("c")]
    live, rebuilt = Ledger(), Ledger()
    for value in log:
        live.apply(KEY, value)
    for value in log:
        rebuilt.apply(KEY, value)
    assert live.entries == rebuilt.entries
    assert live.lookup(KEY, 200).claim == "a"


def test_garbage_records_are_ignored() -> None:
    ledger = Ledger()
    ledger.apply(KEY, b"not json")
    ledger.apply(KEY, b'{"kind": "claim"}')
    ledger.apply(None, claim("a", 1))
    assert ledger.entries == {}


def test_prune_forgets_expired_entries() -> None:
    ledger = Ledger()
    ledger.apply(KEY, claim("a", at=100, lease_ms=10))
    assert ledger.prune(now_ms=50) == 0
    assert ledger.prune(now_ms=200) == 1
    assert ledger.entries == {}


def test_keys_are_scoped_and_correlation_ids_stable() -> None:
    assert scope_key("bet", "alice", "k") != scope_key("bet", "bob", "k")
    assert scope_key("bet", None, "k") != scope_key("note", None, "k")
    assert correlation_id(KEY) == correlation_id(scope_key("bet", "alice", "k1"))
    assert correlation_id(KEY) != correlation_id(scope_key("bet", "alice", "k2"))


def test_fingerprint_covers_method_path_type_and_body() -> None:
    base = fingerprint("POST", "/bets", "application/json", b"{}")
    assert base == fingerprint("POST", "/bets", "application/json", b"{}")
    assert base != fingerprint("PUT", "/bets", "application/json", b"{}")
    assert base != fingerprint("POST", "/bets/x", "application/json", b"{}")
    assert base != fingerprint("POST", "/bets", "text/plain", b"{}")
    assert base != fingerprint("POST", "/bets", "application/json", b"{ }")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("abc", "abc"), ('"abc"', "abc"), (" abc ", "abc"), ("a" * 255, "a" * 255)],
)
def test_parse_key_accepts(raw, expected) -> None:
    assert parse_key(raw) == expected


@pytest.mark.parametrize("raw", ["", '""', "a" * 256, "caf\u00e9", "tab\there"])
def test_parse_key_refuses(raw) -> None:
    with pytest.raises(ValueError):
        parse_key(raw)


def test_prefer_parsing() -> None:
    assert parse_prefer([]).wait(5, 10) == 5
    prefs = parse_prefer(["respond-async, wait=3"])
    assert prefs.respond_async and prefs.wait_s == 3
    assert parse_prefer(["wait=100"]).wait(5, 10) == 10  # capped
    assert parse_prefer(['wait="2"; x=y']).wait_s == 2
    assert parse_prefer(["wait=nope", "wait=-1"]).wait_s is None
    assert parse_prefer(["wait=nan"]).wait_s is None


def test_etag_matching() -> None:
    assert matches_etag('"a"', '"a"')
    assert matches_etag('W/"a"', '"a"')
    assert matches_etag('"x", "a"', '"a"')
    assert matches_etag("*", '"a"')
    assert not matches_etag('"b"', '"a"')
    assert not matches_etag(None, '"a"')


def test_reply_record_becomes_response() -> None:
    record = Message(
        "replies",
        b"k",
        b'{"ok":true}',
        (
            (":status", b"201"),
            ("correlation-id", b"c"),
            ("reply-to", b"r"),
            ("content-type", b"application/json"),
            ("Content-Length", b"999"),
            ("x-state", b"pending"),
        ),
    )
    response = reply_response(record)
    assert response.status == 201
    assert response.headers == [("content-type", "application/json"), ("x-state", "pending")]
    assert response.body == b'{"ok":true}'
    assert reply_response(Message("r", None, None, ((":status", b"abc"),))).status == 502
    assert reply_response(Message("r", None, b"", ())).status == 200


def test_problem_document() -> None:
    problem = Problem(422, "idempotency-key-reused", "nope", headers={"x": "1"}, errors=[1])
    document = json.loads(problem.body("/bets"))
    assert document == {
        "type": "https://edgebridge.dev/problems/idempotency-key-reused",
        "title": "Unprocessable Entity",
        "status": 422,
        "detail": "nope",
        "instance": "/bets",
        "errors": [1],
    }


def test_claim_is_decided_without_read_back_only_when_nothing_foreign_precedes_it() -> None:
    from protocols.http.idempotency import IdempotencyStore

    store = IdempotencyStore(producer=None, hub=None)  # type: ignore[arg-type]
    store.position = {0: 10}
    store._own_writes = {0: {8, 10, 11}}
    assert store._only_own_writes_before(0, 12)  # 10 and 11 are ours; 8 is already applied
    assert not store._only_own_writes_before(0, 13)  # 12 is someone else's
    assert store._own_writes[0] == {10, 11}  # applied offsets are forgotten
    assert store._only_own_writes_before(1, 0)  # nothing before offset 0
    assert not store._only_own_writes_before(1, 1)


def test_a_key_stored_with_the_byte_wise_fingerprint_still_replays_after_the_upgrade() -> None:
    """Keys claimed by an instance from before canonical JSON fingerprints hold the byte-wise
    one; an identical retry during a rolling upgrade replays instead of answering 422."""
    from protocols.http.idempotency import COMPLETE, Entry, encode_response
    from protocols.http.produce import _verdict

    body = b'{"amount": 5, "team": "home"}'
    canonical = fingerprint(
        "POST", "/bets", "application/json", body, {"amount": 5, "team": "home"}
    )
    legacy = fingerprint("POST", "/bets", "application/json", body)
    assert canonical != legacy
    stored = encode_response(Response(202, [("content-type", "application/json")], b"{}"))
    entry = Entry(COMPLETE, "c1", legacy, 2**62, stored)
    replay = _verdict(entry, canonical, legacy)
    assert replay.status == 202 and ("idempotent-replayed", "true") in replay.headers
    with pytest.raises(Problem) as other:
        _verdict(entry, canonical, fingerprint("POST", "/bets", "application/json", b"{}"))
    assert other.value.status == 422
