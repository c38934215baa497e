"""Shared subscriptions across instances: which instance serves which Kafka partitions.

Every instance with local members of ``$share/{group}/{filter}`` writes a membership record
(``$share#{group}#{filter}#{instance}``, refreshed every ``REFRESH_S``) into the sessions
table, which every instance follows. The live instances of a group, sorted, split the Kafka
partitions: instance ``i`` of ``n`` serves partitions ``p % n == i``; inside an instance the
group's members take turns (:class:`~protocols.mqtt.subscriptions.SharedGroup`).

So while membership is stable each record reaches exactly one member in the whole cluster.
While it changes (an instance joins, leaves, or stops refreshing and goes stale after
``STALE_S``) a record can reach two instances' members or none.

The group's progress is saved too, when it has persistent members: per Kafka partition an
instance served, the next offset (key :func:`position_key`), written every session flush and
when the group's last member on the instance leaves, kept for the longest session expiry of
its members. A group that starts on an instance resumes its partitions from there, so messages
published while every member was away reach the group when one comes back. Progress moves when
a record is handed to a member, not when it is acknowledged: a QoS 1 message in flight to a
member that disconnects is not re-sent to the group.
"""

from __future__ import annotations

import json
import time

from bridge.model.message import Message

from .ports import Table
from .session_state import internal_key
from .subscriptions import SharedGroup

PREFIX = "$share#"
REFRESH_S = 10.0
STALE_S = 35.0
_CACHE_S = 1.0


def member_key(group: str, topic_filter: str, instance: str) -> bytes:
    return f"{PREFIX}{group}#{topic_filter}#{instance}".encode()


def position_key(group: str, topic_filter: str, topic: str, partition: int) -> bytes:
    return internal_key("sharepos", json.dumps([group, topic_filter, topic, partition]))


def parse_member_key(key: bytes | None) -> tuple[str, str, str] | None:
    if key is None or not key.startswith(PREFIX.encode()):
        return None
    text = key.decode("utf-8", "replace")[len(PREFIX) :]
    group, _, rest = text.partition("#")
    topic_filter, _, instance = rest.rpartition("#")
    if not group or not topic_filter or not instance:
        return None
    return group, topic_filter, instance


class Membership:
    def __init__(self, store: Table, instance: str) -> None:
        self.store = store
        self.instance = instance
        self._seen: dict[tuple[str, str], dict[str, float]] = {}
        self._live: dict[tuple[str, str], tuple[float, list[str]]] = {}

    def load(self) -> None:
        for _, record in self.store.items():
            self.observe(record)

    def observe(self, record: Message) -> None:
        parsed = parse_member_key(record.key)
        if parsed is None:
            return
        group, topic_filter, instance = parsed
        members = self._seen.setdefault((group, topic_filter), {})
        if record.value is None:
            members.pop(instance, None)
        else:
            members[instance] = float(json.loads(record.value).get("at", 0))
        self._live.pop((group, topic_filter), None)

    def live(self, group: str, topic_filter: str) -> list[str]:
        key = (group, topic_filter)
        now = time.time()
        cached = self._live.get(key)
        if cached is not None and now - cached[0] < _CACHE_S:
            return cached[1]
        members = self._seen.get(key, {})
        live = sorted(i for i, at in members.items() if at > now - STALE_S)
        self._live[key] = (now, live)
        return live

    def serves(self, group: str, topic_filter: str, partition: int) -> bool:
        live = self.live(group, topic_filter)
        if self.instance not in live:
            return True  # not visible yet: serve everything rather than lose messages
        return partition % len(live) == live.index(self.instance)

    async def join(self, group: str, topic_filter: str) -> None:
        value = json.dumps({"at": time.time()}).encode()
        await self.store.put(member_key(group, topic_filter, self.instance), value)

    async def leave(self, group: str, topic_filter: str) -> None:
        await self.store.put(member_key(group, topic_filter, self.instance), None)

    # -- the group's progress -----------------------------------------------------------------

    def saved_positions(
        self, group: str, topic_filter: str, topic: str, partitions: list[int], epoch: int = 0
    ) -> tuple[dict[int, int], bool]:
        """Where the group stopped on these partitions (those saved and not expired), and
        whether some saved progress was of another incarnation of the topic (``epoch``: the
        topic's now): those partitions are read from their start (offset 0: the catch-up
        reader moves a position below the log start up to it, and says so)."""
        now = time.time()
        saved: dict[int, int] = {}
        reset = False
        for partition in partitions:
            record = self.store.get(position_key(group, topic_filter, topic, partition))
            if record is None or record.value is None:
                continue
            try:
                raw = json.loads(record.value)
                until = raw.get("until")
                if until is not None and until <= now:
                    continue
                was = int(raw.get("epoch", 0))  # progress saved before epochs: trusted
                if was and epoch and was != epoch:
                    saved[partition] = 0
                    reset = True
                else:
                    saved[partition] = int(raw["next"])
            except (ValueError, KeyError, TypeError):
                continue
        return saved, reset

    async def save_progress(self, group: SharedGroup) -> None:
        """Write the group's unsaved positions (only with persistent members: a group of clean
        sessions ends with them)."""
        expiry = group.persistent_expiry
        unsaved, group.unsaved = group.unsaved, set()
        if expiry == 0:
            return
        until = None if expiry is None else time.time() + expiry
        for topic, partition in unsaved:
            value = json.dumps(
                {
                    "next": group.progress[(topic, partition)],
                    "until": until,
                    "epoch": group.epochs.get(topic, 0),
                }
            )
            key = position_key(group.name, group.topic_filter, topic, partition)
            await self.store.put(key, value.encode())
