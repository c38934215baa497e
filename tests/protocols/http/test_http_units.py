"""The sans-io parts of the HTTP front-end: the idempotency ledger's decisions, Prefer, keys,
ETags, reply mapping and problem documents. No sockets: these pin the rules themselves."""

from __future__ import annotations

import json

import pytest

from bridge.kafka.owned_table import balanced
from bridge.model.message import Message
from bridge.web.problem import Problem
from protocols.http.asgi import Response
from protocols.http.fetch import matches_etag
from protocols.http.idempotency import (
    COMPLETE,
    PENDING,
    LedgerPartition,
    correlation_id,
    decode_response,
    encode_claim,
    encode_complete,
    encode_release,
    fingerprint,
    fingerprint_digest,
    parse_key,
    scope_key,
)
from protocols.http.prefer import parse_prefer
from protocols.http.replies import reply_response

KEY = scope_key("bet", "alice", "k1")
FP = fingerprint_digest("fp")


def cid(name: str) -> bytes:
    return name.encode().ljust(16, b"\0")


def claim(name: str, until: int = 10_000, fp: bytes = FP) -> bytes:
    return encode_claim(cid(name), fp, until, "bets", {0: 5, 2: 9}, "/loc")


def complete(name: str, until: int = 10_000, status: int = 202) -> bytes:
    return encode_complete(cid(name), FP, until, Response(status, [("x", "y")], b"body"))


def release(name: str, at: int = 100) -> bytes:
    return encode_release(cid(name), FP, at)


def test_a_claim_takes_a_free_key_and_later_claims_lose() -> None:
    table = LedgerPartition()
    table.apply(KEY, claim("a"), now_ms=100)
    table.apply(KEY, claim("b"), now_ms=101)
    entry = table.lookup(KEY, now_ms=150)
    assert entry is not None and (entry.claim, entry.state) == (cid("a"), PENDING)
    assert entry.target() == ("bets", {0: 5, 2: 9}, "/loc")


def test_a_losers_complete_or_release_changes_nothing() -> None:
    table = LedgerPartition()
    table.apply(KEY, claim("a"), now_ms=100)
    table.apply(KEY, complete("b"), now_ms=102)
    table.apply(KEY, release("b"), now_ms=103)
    entry = table.lookup(KEY, now_ms=150)
    assert entry is not None and (entry.claim, entry.state) == (cid("a"), PENDING)


def test_complete_stores_the_response_until_it_expires() -> None:
    table = LedgerPartition()
    table.apply(KEY, claim("a"), now_ms=100)
    table.apply(KEY, complete("a", until=1120), now_ms=120)
    entry = table.lookup(KEY, now_ms=500)
    assert entry is not None and entry.state == COMPLETE
    assert entry.outcome is not None
    assert decode_response(entry.outcome) == Response(202, [("x", "y")], b"body")
    assert entry.fingerprint == FP
    assert table.lookup(KEY, now_ms=1120) is None
    table.apply(KEY, claim("c", until=5000), now_ms=1200)  # after expiry a new claim takes it
    assert table.lookup(KEY, now_ms=1201).claim == cid("c")


def test_a_complete_alone_counts_as_after_compaction() -> None:
    table = LedgerPartition()
    table.apply(KEY, complete("a"), now_ms=100)
    assert table.lookup(KEY, now_ms=101).state == COMPLETE


def test_release_frees_only_its_own_claim_and_tombstone_forgets() -> None:
    table = LedgerPartition()
    table.apply(KEY, claim("a"), now_ms=100)
    table.apply(KEY, release("a"), now_ms=101)
    assert table.lookup(KEY, now_ms=101) is None
    table.apply(KEY, claim("b"), now_ms=102)
    table.apply(KEY, release("a"), now_ms=103)  # a late read-back of a's release
    assert table.lookup(KEY, now_ms=103).claim == cid("b")
    table.apply(KEY, None)
    assert table.lookup(KEY, now_ms=104) is None


def test_records_past_their_expiry_are_not_loaded() -> None:
    table = LedgerPartition()
    table.apply(KEY, claim("a", until=50), now_ms=100)
    table.apply(KEY, complete("a", until=60), now_ms=100)
    assert table.entries == {}


def test_rebuilding_from_the_log_decides_exactly_as_live() -> None:
    log = [claim("a"), claim("b"), complete("a"), claim("c"), release("c")]
    live, rebuilt = LedgerPartition(), LedgerPartition()
    for value in log:
        live.apply(KEY, value, now_ms=200)
    for value in log:
        rebuilt.apply(KEY, value, now_ms=300)
    assert live.entries == rebuilt.entries
    assert live.lookup(KEY, 400).claim == cid("a")


def test_garbage_records_are_ignored() -> None:
    table = LedgerPartition()
    table.apply(KEY, b"not a record")
    table.apply(KEY, b"\x09" + claim("a")[1:])  # unknown version
    table.apply(None, claim("a"))
    assert table.entries == {}


def test_prune_forgets_expired_entries() -> None:
    table = LedgerPartition()
    table.apply(KEY, claim("a", until=110), now_ms=100)
    assert table.prune(now_ms=50) == 0
    assert table.prune(now_ms=200) == 1
    assert table.entries == {}


def test_balanced_assignment_is_sticky_and_even() -> None:
    plan = balanced(list(range(12)), {"a": range(12), "b": []})
    assert plan == {"a": [0, 1, 2, 3, 4, 5], "b": [6, 7, 8, 9, 10, 11]}
    again = balanced(list(range(12)), {"a": plan["a"], "b": plan["b"], "c": []})
    assert sorted(len(p) for p in again.values()) == [4, 4, 4]
    assert set(again["a"]) <= set(plan["a"]) and set(again["b"]) <= set(plan["b"])
    assert balanced([0, 1], {}) == {}


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
