"""The fast constructors of frozen dataclasses make the same, still frozen, objects."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.model.message import Message, Origin, new_message
from protocols.mqtt.wire.fastinit import maker
from protocols.mqtt.wire.packets import Properties, Publish


def test_maker_builds_what_the_constructor_builds_and_it_stays_frozen():
    props = Properties(content_type="a/b")
    made = maker(Publish)("t/x", b"p", 1, True, False, 7, props)
    assert made == Publish("t/x", b"p", 1, True, False, 7, props)
    assert hash(made) == hash(Publish("t/x", b"p", 1, True, False, 7, props))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.topic = "other"  # type: ignore[misc]
    origin = Origin("mqtt", "c")
    # Kafka records: the fast constructor beside Message itself (bridge/model/message.py)
    record = new_message("k-topic", b"key", b"v", (("h", b"1"),), origin)
    assert record == Message("k-topic", b"key", b"v", (("h", b"1"),), origin=origin)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.topic = "other"  # type: ignore[misc]


def test_maker_needs_every_field_and_slots():
    with pytest.raises(TypeError):
        maker(Publish)("t/x", b"p")

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError):
        maker(NoSlots)
