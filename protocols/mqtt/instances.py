"""Which bridge instances are alive, as every instance sees it in the sessions table.

Each instance (one per process: :attr:`MqttFrontend.instance`) writes a heartbeat record
(key :func:`heartbeat_key`, value ``{"at": epoch seconds}``) every third of
``[listeners.mqtt] instance_timeout_s``, and deletes it when it stops. An instance whose last
heartbeat is older than the timeout is dead: the wills of the connections it held are then
published by another instance (see :mod:`.wills`), as Zilla's session leases allow.

The clock is each writer's wall clock; instances are assumed to agree within a few seconds
(NTP), which the default 30 s timeout absorbs.
"""

from __future__ import annotations

import json
import time

from bridge.model.message import Message

from .ports import Table
from .session_state import internal_key, name_of_internal_key


def heartbeat_key(instance: str) -> bytes:
    return internal_key("alive", instance)


def instance_of_key(key: bytes | None) -> str | None:
    return name_of_internal_key("alive", key)


class Instances:
    """Heartbeats of every instance (this one's included) and this instance's own."""

    def __init__(self, me: str, timeout_s: float) -> None:
        self.me = me
        self.timeout_s = timeout_s
        self.beat_every_s = timeout_s / 3
        self._seen: dict[str, float] = {}  # instance -> its last heartbeat
        self._first_sight: dict[str, float] = {}  # instances named by a will, never heard from
        # Our own heartbeats read back: the table flows. Since when, without a gap: after a
        # Kafka outage every other instance's heartbeat is old too, and each gets a whole
        # timeout of flowing table to show it is alive before it counts as dead.
        self._own_last = 0.0
        self._flowing_since = float("inf")

    def observe(self, record: Message) -> None:
        instance = instance_of_key(record.key)
        if instance is None:
            return
        if record.value is None:
            # Stopped cleanly: its last heartbeat stands, so it counts as dead one timeout
            # after it, by when its connections' wills are published or stored by itself.
            return
        try:
            at = float(json.loads(record.value)["at"])
        except (ValueError, KeyError, TypeError):
            return
        self._seen[instance] = max(at, self._seen.get(instance, 0.0))
        if instance == self.me and at > self._own_last:
            if at - self._own_last > 2 * self.beat_every_s:  # the first, or after a gap
                self._flowing_since = at
            self._own_last = at

    def load(self, items: list[tuple[bytes | None, Message]]) -> None:
        for key, record in items:
            if instance_of_key(key) is not None:
                self.observe(record)

    def last_seen(self, instance: str) -> float:
        """Its last heartbeat; for an instance never heard from, when we first asked (so it
        gets a whole timeout to show up: its first heartbeat may still be on its way)."""
        seen = self._seen.get(instance)
        if seen is not None:
            return seen
        return self._first_sight.setdefault(instance, time.time())

    def dead_after(self, instance: str) -> float:
        """When ``instance`` counts as dead unless it beats again (epoch seconds): a timeout
        after its last heartbeat, or after the table (our own heartbeats) flows again."""
        if instance == self.me:
            return float("inf")
        return max(self.last_seen(instance), self._flowing_since) + self.timeout_s

    def alive(self, instance: str) -> bool:
        """Judged by our own latest heartbeat read back, not the clock: while this instance
        cannot read the table (a Kafka outage, a partition) nobody is declared dead."""
        return self._own_last < self.dead_after(instance)

    async def beat(self, store: Table) -> None:
        await store.put(heartbeat_key(self.me), json.dumps({"at": time.time()}).encode())

    async def stop(self, store: Table) -> None:
        await store.put(heartbeat_key(self.me), None)
