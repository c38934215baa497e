"""One PUBLISH per message for a client whose subscriptions overlap [MQTT-3.3.4-3/4].

The first of a client's matching subscriptions to reach a record sends it for all, at the highest
granted QoS and with every matching Subscription Identifier; the others find it sent. Each
subscription reads Kafka on its own (a resumed one catches up while another is live), hence a
memory of offsets sent rather than of record objects.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.model.config import Route
from bridge.model.message import Message

from .subscriptions import Subscription

SENT_MEMORY = 65_536  # per partition: how far apart overlapping subscriptions' reads may be


class SentOnce:
    """Offsets already sent to one client, per (Kafka topic, partition), bounded."""

    __slots__ = ("_offsets",)

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, int], dict[int, None]] = {}

    def was_sent(self, record: Message) -> bool:
        """Was ``record`` sent already (through another subscription)? If not, it is now."""
        assert record.partition is not None and record.offset is not None
        at = (record.topic, record.partition)
        offsets = self._offsets.get(at)
        if offsets is None:
            offsets = self._offsets[at] = {}
        elif record.offset in offsets:
            return True
        offsets[record.offset] = None
        if len(offsets) > SENT_MEMORY:
            del offsets[next(iter(offsets))]  # the oldest
        return False

    def forget(self, topic: str) -> None:
        """A reset of ``topic``: its offsets start again (a new incarnation) or jump (records
        deleted), so offsets remembered as sent no longer name those records."""
        for at in [at for at in self._offsets if at[0] == topic]:
            del self._offsets[at]


def overlapping(
    subscriptions: Iterable[Subscription],
    first: Subscription,
    record: Message,
    route: Route,
    topic: str,
) -> tuple[int, tuple[int, ...], str | None]:
    """The highest granted QoS and the identifiers of the (non-shared) ``subscriptions`` that
    match ``record``, and a reset any of them has to tell (told once: it is cleared)."""
    qos = first.qos
    identifiers: set[int] = set()
    reset: str | None = None
    for subscription in subscriptions:
        if subscription.group is not None:
            continue  # a shared subscription is served on its own [MQTT-4.8.2]
        if subscription is not first and not subscription.accepts(route, topic, record):
            continue
        qos = max(qos, subscription.qos)
        if subscription.identifier is not None:
            identifiers.add(subscription.identifier)
        tracker = subscription.trackers.get(record.topic)
        if tracker is not None and tracker.reset_reason is not None:
            reset = reset or tracker.reset_reason
            tracker.reset_reason = None
    return qos, tuple(sorted(identifiers)), reset
