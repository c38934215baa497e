"""The fast constructors of frozen dataclasses make the same, still frozen, objects."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.model.message import Message, Origin
from protocols.mqtt.fast_init import maker
from protocols.mqtt.packets import Properties, Publish


def test_maker_builds_what_the_constructor_builds_and_it_stays_frozen():
    props = Properties(content_type="a/b")
    made = maker(Publish)("t/x", b"p", 1, True, False, 7, props)
    assert made == Publish("t/x", b"p", 1, True, False, 7, props)
    assert hash(made) == hash(Publish("t/x", b"p", 1, True, False, 7, props))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.topic = "other"  # type: ignore[misc]
    origin = Origin("mqtt", "c")
    record = maker(Message)("k-topic", b"key", b"v", (("h", b"1"),), None, None, None, origin)
    assert record == Message("k-topic", b"key", b"v", (("h", b"1"),), origin=origin)


def test_maker_needs_every_field_and_slots():
    with pytest.raises(TypeError):
        maker(Publish)("t/x", b"p")

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError):
        maker(NoSlots)
