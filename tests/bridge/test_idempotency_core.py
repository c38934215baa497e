"""The protocol-neutral ledger core: outcomes are opaque bytes, verdicts are exceptions each
front-end maps onto its own protocol."""

import pytest

from bridge.edge.idempotency import (
    InFlight,
    LedgerPartition,
    OtherRequest,
    decide,
    encode_claim,
    encode_complete,
    fingerprint,
    fingerprint_digest,
    scope_key,
)

KEY = scope_key("bet", "alice", "k1")
FP = fingerprint("POST", "/bets", "application/json", b"{}", {})
CLAIM = b"c".ljust(16, b"\0")


def test_a_pending_key_is_in_flight_then_replays_its_opaque_outcome() -> None:
    table = LedgerPartition()
    table.apply(KEY, encode_claim(CLAIM, fingerprint_digest(FP), 10_000, "bets", {}), now_ms=1)
    entry = table.lookup(KEY, now_ms=2)
    assert entry is not None
    with pytest.raises(InFlight):
        decide(entry, FP)
    outcome = b"\x00\x01any bytes a front-end chose"
    table.apply(KEY, encode_complete(CLAIM, fingerprint_digest(FP), 10_000, outcome), now_ms=3)
    entry = table.lookup(KEY, now_ms=4)
    assert entry is not None
    assert decide(entry, FP) == outcome
    with pytest.raises(OtherRequest):
        decide(entry, fingerprint("POST", "/bets", "application/json", b"{}", {"a": 1}))
