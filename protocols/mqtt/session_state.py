"""Persistent MQTT sessions as records of the compacted topic ``edgebridge.mqtt.sessions``.

Two keys per client id, so that ownership and state never overwrite each other:

* ``<clientId>``: the session state (:class:`SessionState`, JSON): subscriptions with their
  options and, per Kafka topic, the saved position (never ahead of what the client
  acknowledged), offsets acknowledged beyond it, deliveries in flight (to re-send with DUP and
  the same packet id), QoS 2 packet ids in their second phase, the expiry interval and when the
  client left. A tombstone ends the session.
* ``<clientId>#owner``: who holds the connection (:class:`Owner`): a fresh nonce per
  connection. Every instance follows the table; an instance holding a connection for that client
  id under another nonce closes it ("session taken over", 0x8E), saves its state marked
  ``released_to`` the new nonce, and the new owner waits (briefly) for that before resuming.

Session expiry is judged from the state itself (``left_at + expiry``), so an expired session is
never resumed even if no instance has deleted it yet; a periodic sweep deletes expired sessions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

OWNER_SUFFIX = "#owner"
NEVER = None  # MQTT 3.1.1 clean-session=0: the session never expires


@dataclass(slots=True)
class StoredSubscription:
    topic_filter: str  # as subscribed, ``$share/{group}/`` included
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None
    # Kafka topic -> partition -> next offset to deliver from
    positions: dict[str, dict[int, int]] = field(default_factory=dict)
    # Kafka topic -> the epoch (incarnation) of those positions; absent in records written
    # before epochs (and on clusters without topic ids): trusted as they are
    epochs: dict[str, int] = field(default_factory=dict)
    # Kafka topic -> partition -> offsets at/after the position the client already acknowledged
    acked: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    # Kafka topic -> partition -> offset -> packet id of a delivery in flight
    inflight: dict[str, dict[int, dict[int, int]]] = field(default_factory=dict)
    # The SUBSCRIBE's filter values (MQTT 5 user properties naming [[routes.filters]]).
    filter_values: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        stored = self._json()
        if self.filter_values:  # absent when unfiltered: sessions written before read the same
            stored["fv"] = dict(self.filter_values)
        return stored

    def _json(self) -> dict[str, Any]:
        return {
            "filter": self.topic_filter,
            "qos": self.qos,
            "nl": self.no_local,
            "rap": self.retain_as_published,
            "rh": self.retain_handling,
            "id": self.identifier,
            "pos": _str_keys(self.positions),
            **({"ep": self.epochs} if self.epochs else {}),
            "acked": _str_keys(self.acked),
            "inflight": {
                t: {str(p): {str(o): i for o, i in m.items()} for p, m in ps.items()}
                for t, ps in self.inflight.items()
            },
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StoredSubscription:
        return cls(
            topic_filter=str(raw["filter"]),
            qos=int(raw.get("qos", 0)),
            no_local=bool(raw.get("nl", False)),
            retain_as_published=bool(raw.get("rap", False)),
            retain_handling=int(raw.get("rh", 0)),
            identifier=raw.get("id"),
            filter_values={str(k): str(v) for k, v in raw.get("fv", {}).items()},
            positions={
                t: {int(p): int(o) for p, o in ps.items()} for t, ps in raw.get("pos", {}).items()
            },
            epochs={t: int(e) for t, e in raw.get("ep", {}).items()},
            acked={
                t: {int(p): [int(o) for o in os] for p, os in ps.items()}
                for t, ps in raw.get("acked", {}).items()
            },
            inflight={
                t: {int(p): {int(o): int(i) for o, i in m.items()} for p, m in ps.items()}
                for t, ps in raw.get("inflight", {}).items()
            },
        )


@dataclass(slots=True)
class SessionState:
    client_id: str
    expiry: int | None  # seconds after the client left; None: never (3.1.1 persistent)
    subscriptions: dict[str, StoredSubscription] = field(default_factory=dict)
    pubrel_out: list[int] = field(default_factory=list)  # our QoS 2 deliveries awaiting PUBCOMP
    pubrel_in: list[int] = field(default_factory=list)  # client QoS 2 publishes awaiting PUBREL
    left_at: float | None = None  # epoch seconds; None while connected
    released_to: str | None = None  # the nonce of the connection that took it over

    def expired(self, now: float | None = None) -> bool:
        if self.left_at is None or self.expiry is None:
            return False
        return (now or time.time()) >= self.left_at + self.expiry

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "client": self.client_id,
                "expiry": self.expiry,
                "subs": [s.to_json() for s in self.subscriptions.values()],
                "pubrel_out": self.pubrel_out,
                "pubrel_in": self.pubrel_in,
                "left_at": self.left_at,
                "released_to": self.released_to,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> SessionState:
        raw = json.loads(value)
        subs = [StoredSubscription.from_json(s) for s in raw.get("subs", [])]
        return cls(
            client_id=str(raw["client"]),
            expiry=raw.get("expiry"),
            subscriptions={s.topic_filter: s for s in subs},
            pubrel_out=[int(i) for i in raw.get("pubrel_out", [])],
            pubrel_in=[int(i) for i in raw.get("pubrel_in", [])],
            left_at=raw.get("left_at"),
            released_to=raw.get("released_to"),
        )


@dataclass(frozen=True, slots=True)
class Owner:
    nonce: str
    connected: bool
    at: float

    def encode(self) -> bytes:
        return json.dumps(
            {"nonce": self.nonce, "connected": self.connected, "at": self.at}
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> Owner:
        raw = json.loads(value)
        return cls(str(raw["nonce"]), bool(raw["connected"]), float(raw["at"]))


def internal_key(kind: str, name: str) -> bytes:
    """A key of the sessions table for the bridge's own records (wills, heartbeats, group
    progress): U+0000 is never in a client id (the codec refuses it), so no session clashes."""
    return f"\x00{kind}\x00{name}".encode()


def name_of_internal_key(kind: str, key: bytes | None) -> str | None:
    """``name`` if ``key`` is ``internal_key(kind, name)``, else None."""
    prefix = f"\x00{kind}\x00".encode()
    if key is None or not key.startswith(prefix):
        return None
    return key[len(prefix) :].decode("utf-8", "replace")


def state_key(client_id: str) -> bytes:
    return client_id.encode()


def owner_key(client_id: str) -> bytes:
    return (client_id + OWNER_SUFFIX).encode()


def client_of_owner_key(key: bytes | None) -> str | None:
    if key is None or not key.endswith(OWNER_SUFFIX.encode()):
        return None
    return key[: -len(OWNER_SUFFIX)].decode("utf-8", "replace")


def _str_keys(nested: dict[str, dict[int, Any]]) -> dict[str, dict[str, Any]]:
    return {t: {str(p): v for p, v in ps.items()} for t, ps in nested.items()}
