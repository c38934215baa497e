"""Positions: round trips, the stream tag, and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.model.position import Position, PositionError, stream_tag

offsets = st.dictionaries(st.integers(0, 5000), st.integers(0, 2**62), max_size=64)


@given(offsets, st.integers(0, 2**32 - 1))
def test_round_trip(value: dict[int, int], tag: int) -> None:
    position = Position(value)
    encoded = position.encode(tag)
    assert Position.decode(encoded, tag) == position
    assert all(c.isalnum() or c in "-_" for c in encoded), "must be url-safe without padding"


def test_compact() -> None:
    # Three partitions with six-digit offsets fit in a short id (Zilla's is longer).
    assert len(Position({0: 123456, 1: 234567, 2: 345678}).encode(stream_tag("odds"))) <= 28


def test_other_stream_refused() -> None:
    encoded = Position({0: 5}).encode(stream_tag("matches", "1"))
    with pytest.raises(PositionError, match="another stream"):
        Position.decode(encoded, stream_tag("matches", "2"))
    assert Position.decode(encoded, None) == Position({0: 5})


@given(st.text(max_size=300))
def test_garbage_only_raises_position_error(text: str) -> None:
    try:
        Position.decode(text, None)
    except PositionError:
        pass


@given(st.binary(max_size=80))
def test_mutated_bytes_only_raise_position_error(raw: bytes) -> None:
    import base64

    text = base64.urlsafe_b64encode(b"\x01" + raw).rstrip(b"=").decode()
    try:
        Position.decode(text, None)
    except PositionError:
        pass


def test_advanced_and_merged() -> None:
    position = Position({0: 3, 1: 7})
    assert position.advanced(0, 9) == Position({0: 10, 1: 7})
    assert position.merged({1: 2, 2: 4}) == Position({0: 3, 1: 7, 2: 4})
    assert position.is_at_or_after({0: 3})
    assert not position.is_at_or_after({1: 8})


def test_an_epoch_travels_in_the_id_and_ids_without_one_still_decode() -> None:
    from bridge.model.position import epoch_of

    epoch = epoch_of(bytes(range(16)))
    assert epoch and epoch_of(None) == 0 and epoch_of(b"") == 0
    with_epoch = Position({0: 5, 2: 9}, epoch)
    decoded = Position.decode(with_epoch.encode(7), 7)
    assert decoded == with_epoch and decoded.epoch == epoch
    assert decoded.advanced(0, 5).epoch == epoch and decoded.merged({1: 3}).epoch == epoch
    # An id made before epochs (version 1) still resumes, with the epoch unknown (0)...
    plain = Position({0: 5, 2: 9})
    assert plain.encode(7).startswith("AQ")  # version byte 0x01, unchanged
    assert Position.decode(plain.encode(7), 7).epoch == 0
    # ...and positions of two incarnations are never equal.
    assert Position({0: 5}, epoch) != Position({0: 5}, epoch + 1)
