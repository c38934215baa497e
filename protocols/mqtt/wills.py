"""Will messages: published when a connection ends without a normal DISCONNECT.

MQTT 5 will delay: the will waits ``min(will delay, session expiry)`` seconds and is cancelled
if the client connects again in that time (on this instance, or on another one: its ownership
claim reaches every instance through the sessions table). A will goes through the same route,
access and schema checks as a PUBLISH of that client would; they are made when the connection
ends, and the Kafka records it will write (the will itself and, if retained, its retained-table
record) are prepared then.

A delayed will survives the death of its instance: it is also written to the sessions table
(key :func:`will_key`, a :class:`StoredWill`), which every instance follows. The instance that
held the connection publishes it when the delay ends and tombstones the record; a reconnect
(anywhere) tombstones it too. Any other instance that still sees the record
:data:`ORPHAN_GRACE_S` after it was due claims it by writing it back with a claim, and the
*first* claim the table holds after the will (or after the claim it supersedes) wins: every
instance reads the one-partition table in the same order, so all agree on the winner, which
publishes and tombstones. A winner that dies too is superseded by a new claim one grace later.
At least once: an owner slower than the grace (or a partition between instances) can publish a
will twice; it is never lost while one instance lives.

A will also survives the death of its instance *while the client is connected*: at CONNECT it is
stored *armed* (``armed_by`` = the instance holding the connection, with its delay). The
connection ending on a live instance replaces it (published and tombstoned, or stored with its
due time) or deletes it (a normal DISCONNECT). Other instances watch the heartbeats of the
instance (:mod:`.instances`); once it is dead, the will is due its delay after the instance's
last sign of life and is claimed and published as above, unless the client is back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message

from .ingest import Ingest, PublishRefused, Sender
from .instances import Instances
from .ports import Spawn, Table
from .session_state import Owner, internal_key, name_of_internal_key, owner_key
from .wire.packets import Connect, Properties, Publish

log = structlog.get_logger(__name__)
ORPHAN_GRACE_S = 5.0  # after the due time, before another instance claims a will


def will_key(client_id: str) -> bytes:
    return internal_key("will", client_id)


def client_of_will_key(key: bytes | None) -> str | None:
    return name_of_internal_key("will", key)


@dataclass(slots=True)
class StoredWill:
    """A will waiting for its delay, as the sessions table holds it."""

    client_id: str
    nonce: str  # the connection that left
    due: float  # epoch seconds
    record: Message  # for the route's Kafka topic
    acks: str | None
    retained: Message | None = None  # for the retained-messages table, if a retained will
    claimed_by: str | None = None  # an instance publishing it for a dead owner
    after: int | None = None  # the offset of the will or claim this claim supersedes
    armed_by: str | None = None  # the connection is still open, on this instance
    delay: float = 0.0  # armed: seconds to wait after the connection is gone

    def encode(self) -> bytes:
        raw: dict[str, Any] = {
            "v": 1,
            "client": self.client_id,
            "nonce": self.nonce,
            "due": self.due,
            "record": _message_json(self.record),
            "acks": self.acks,
            "retained": None if self.retained is None else _message_json(self.retained),
        }
        if self.claimed_by is not None:
            raw["claim"] = {"by": self.claimed_by, "after": self.after}
        if self.armed_by is not None:
            raw["armed"] = {"by": self.armed_by, "delay": self.delay}
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> StoredWill:
        raw = json.loads(value)
        claim = raw.get("claim") or {}
        armed = raw.get("armed") or {}
        retained = raw.get("retained")
        return cls(
            client_id=str(raw["client"]),
            nonce=str(raw["nonce"]),
            due=float(raw["due"]),
            record=_message_of(raw["record"]),
            acks=raw.get("acks"),
            retained=None if retained is None else _message_of(retained),
            claimed_by=claim.get("by"),
            after=claim.get("after"),
            armed_by=armed.get("by"),
            delay=float(armed.get("delay", 0.0)),
        )


@dataclass(slots=True)
class _Watched:
    """Another instance's will as this instance sees it in the table."""

    will: StoredWill
    current: int  # offset of the will, or of the claim that won last
    winner: str | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class WillOwner(Protocol):
    """The connection a will belongs to (:class:`protocols.mqtt.client.Client`)."""

    client_id: str
    nonce: str  # this connection's
    expiry: int | None  # its session's expiry (caps the will delay)
    sender: Sender  # checks the will as a PUBLISH of this connection and makes its records


class Wills:
    def __init__(
        self,
        instance: str,
        table: Table,
        instances: Instances,
        ingest: Ingest,
        connected: Callable[[str], bool],
        spawn: Spawn,
    ) -> None:
        self.instance = instance  # this process (armed wills name it)
        self.table = table  # the sessions table: wills are stored there
        self.instances = instances
        self.ingest = ingest  # a will is published as its connection's publishes are
        self.connected = connected  # is this client id connected to this instance?
        self.spawn = spawn
        self._pending: dict[str, tuple[asyncio.TimerHandle, str]] = {}
        self._watched: dict[str, _Watched] = {}
        self._armed: dict[str, str] = {}  # client id -> nonce of the connection that armed it
        # other instances' armed wills: client id -> instance, instance -> {client id: offset}
        self._armed_at: dict[str, str] = {}
        self._by_instance: dict[str, dict[str, int]] = {}
        self._instance_timers: dict[str, asyncio.TimerHandle] = {}

    # -- a connection of ours, while it is open ---------------------------------------------------

    def arm(self, client: WillOwner, connect: Connect) -> None:
        """Store the will of a connection that just connected, armed: published by another
        instance should this one die while the connection is open."""
        prepared = self._prepare(client, connect, quiet=True)
        if prepared is None:
            return  # refused: logged when the connection ends, if it ends without DISCONNECT
        prepared.armed_by = self.instance
        prepared.delay = _delay(client, connect)
        self._armed[client.client_id] = client.nonce
        self.spawn(self._remember(prepared))

    def disarm(self, client: WillOwner, delete: bool = True) -> None:
        """The connection ended without its will (a normal DISCONNECT, or taken over: then the
        new connection's CONNECT deleted the stored will already, ``delete`` is False)."""
        if self._armed.get(client.client_id) != client.nonce:
            return
        del self._armed[client.client_id]
        if delete:
            self.spawn(self._tombstone(client.client_id))

    # -- the connection that left was ours ------------------------------------------------------

    def schedule(self, client: WillOwner, connect: Connect, taken_over: bool = False) -> None:
        """The connection ended without a normal DISCONNECT (or, MQTT 5, was taken over: the
        stored will is the new connection's business then, and a delayed will is void)."""
        delay = _delay(client, connect)
        armed = self._armed.get(client.client_id) == client.nonce
        if armed:
            del self._armed[client.client_id]
        if taken_over and delay > 0:
            return
        ours = armed and not taken_over  # the stored will is this connection's to clear
        prepared = self._prepare(client, connect)
        if prepared is None:
            if ours:
                self.spawn(self._tombstone(client.client_id))
            return
        if delay <= 0:
            self.spawn(self._publish(prepared, forget=ours))
            return
        prepared.due = time.time() + delay
        self.cancel(client.client_id)
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._fire, prepared)
        self._pending[client.client_id] = (handle, client.nonce)
        self.spawn(self._remember(prepared))

    def _prepare(
        self, client: WillOwner, connect: Connect, quiet: bool = False
    ) -> StoredWill | None:
        """The will's Kafka records, checked as a PUBLISH of this client (None: refused;
        logged unless ``quiet``)."""
        assert connect.will_topic is not None
        props = connect.will_properties
        if props.will_delay_interval is not None:
            props = _without_delay(props)
        publish = Publish(
            connect.will_topic,
            connect.will_payload,
            connect.will_qos,
            connect.will_retain,
            False,
            None,
            props,
        )
        try:
            made = client.sender.records(publish, connect.will_topic)
        except PublishRefused as exc:
            if not quiet:
                _refused(client, exc)
            return None
        return StoredWill(
            client.client_id, client.nonce, 0.0, made.message, made.route.acks, made.retained
        )

    async def _remember(self, will: StoredWill) -> None:
        try:
            await self.table.put(will_key(will.client_id), will.encode())
        except (KafkaUnavailable, TimeoutError) as exc:  # still published from memory
            log.warning("mqtt.will_not_stored", client_id=will.client_id, error=str(exc))

    def _fire(self, will: StoredWill) -> None:
        self._pending.pop(will.client_id, None)
        self.spawn(self._publish(will, forget=True))

    def cancel(self, client_id: str, unless_nonce: str | None = None) -> None:
        """The client is back (a new connection, ``unless_nonce`` being the one that left)."""
        pending = self._pending.get(client_id)
        if pending is None or pending[1] == unless_nonce:
            return
        pending[0].cancel()
        del self._pending[client_id]
        log.info("mqtt.will_cancelled", client_id=client_id)

    def forget(self, client_id: str) -> None:
        """A new connection of ``client_id`` here: no instance may publish its stored will."""
        if self.table.get(will_key(client_id)) is not None:
            self.spawn(self._tombstone(client_id))

    async def _tombstone(self, client_id: str) -> None:
        try:
            await self.table.put(will_key(client_id), None)
        except (KafkaUnavailable, TimeoutError) as exc:
            log.warning("mqtt.will_not_cleared", client_id=client_id, error=str(exc))

    async def _publish(self, will: StoredWill, forget: bool = False) -> None:
        try:
            await self.ingest.send(will.record, will.retained, will.acks or None)
        except KafkaUnavailable as exc:
            log.warning("mqtt.will_failed", client_id=will.client_id, error=str(exc))
            return
        log.info("mqtt.will_published", client_id=will.client_id, claimed=will.claimed_by)
        if forget:
            await self._tombstone(will.client_id)

    # -- every instance: wills in the sessions table ----------------------------------------------

    def observe(self, record: Message) -> None:
        """A record of a will key, in table order (from the hub, or the table at start-up)."""
        client_id = client_of_will_key(record.key)
        if client_id is None:
            return
        indexed = self._indexed_offset(client_id)
        self._unindex(client_id)
        if record.value is None:
            self._unwatch(client_id)
            return
        assert record.offset is not None
        try:
            will = StoredWill.decode(record.value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mqtt.will_unreadable", client_id=client_id, error=str(exc))
            return
        if will.armed_by == self.instance:
            # Ours, armed: its connection is open here (or was: then this instance replaces
            # or deletes the record itself). A claim of it means another instance thought us
            # dead; the client's connection, here, decides.
            self._unwatch(client_id)
            return
        if will.armed_by is not None and will.claimed_by is None:
            # Another instance's open connection: only an index entry until that instance is
            # dead (a watched will per connected client cluster-wide would cost memory and
            # a timer each).
            self._unwatch(client_id)
            self._index(client_id, will.armed_by, record.offset)
            return
        watched = self._watched.get(client_id)
        if watched is None and indexed is not None and will.claimed_by is not None:
            # a claim of an armed will we had only indexed: the claim decides below
            armed = replace(will, claimed_by=None, after=None)
            watched = self._watched[client_id] = _Watched(armed, indexed)
        if will.claimed_by is None or watched is None:  # a new will (or the first we see)
            self._unwatch(client_id)
            watched = self._watched[client_id] = _Watched(
                will, record.offset, will.claimed_by, None
            )
            # a claim seen first: its winner gets one grace to publish before we step in
            at = (time.time() if will.armed_by else will.due) + ORPHAN_GRACE_S
            self._check_later(client_id, watched, at)
        elif will.after == watched.current and will.nonce == watched.will.nonce:
            watched.current, watched.winner = record.offset, will.claimed_by  # first claim wins
            if watched.timer is not None:
                watched.timer.cancel()
            self._check_later(client_id, watched, time.time() + ORPHAN_GRACE_S)

    def _unwatch(self, client_id: str) -> None:
        watched = self._watched.pop(client_id, None)
        if watched is not None and watched.timer is not None:
            watched.timer.cancel()

    # -- armed wills of other instances: an index per instance, one timer per instance ----------

    def _index(self, client_id: str, instance: str, offset: int) -> None:
        self._armed_at[client_id] = instance
        self._by_instance.setdefault(instance, {})[client_id] = offset
        if instance not in self._instance_timers:
            self._check_instance_later(instance)

    def _indexed_offset(self, client_id: str) -> int | None:
        instance = self._armed_at.get(client_id)
        return None if instance is None else self._by_instance[instance].get(client_id)

    def _unindex(self, client_id: str) -> None:
        instance = self._armed_at.pop(client_id, None)
        if instance is None:
            return
        armed = self._by_instance.get(instance)
        if armed is not None:
            armed.pop(client_id, None)
            if not armed:
                del self._by_instance[instance]
                timer = self._instance_timers.pop(instance, None)
                if timer is not None:
                    timer.cancel()

    def _check_instance_later(self, instance: str) -> None:
        # Not before a quarter heartbeat: "alive" is judged by our own heartbeat read back,
        # which can trail the clock by one interval.
        instances = self.instances
        delay = max(instances.dead_after(instance) - time.time(), instances.beat_every_s / 4)
        loop = asyncio.get_running_loop()
        self._instance_timers[instance] = loop.call_later(delay, self._instance_due, instance)

    def _instance_due(self, instance: str) -> None:
        """The heartbeat of ``instance`` may be stale: if it is dead, watch each will it armed
        (due its delay after the instance's last sign of life, see :meth:`_armed_due`)."""
        del self._instance_timers[instance]
        if self.instances.alive(instance):
            if instance in self._by_instance:
                self._check_instance_later(instance)
            return
        armed = self._by_instance.get(instance, {})
        log.info("mqtt.instance_dead", instance=instance, wills=len(armed))
        for client_id in list(armed):
            self._watch_armed(client_id)

    def _watch_armed(self, client_id: str) -> None:
        """Turn the index entry of an armed will into a watched will (read from the table)."""
        offset = self._indexed_offset(client_id)
        self._unindex(client_id)
        record = self.table.get(will_key(client_id))
        if offset is None or record is None or record.value is None or record.offset != offset:
            return
        will = StoredWill.decode(record.value)
        watched = self._watched[client_id] = _Watched(will, offset)
        assert will.armed_by is not None
        self._check_later(client_id, watched, self._armed_due(will.armed_by, will.delay))

    def _check_later(self, client_id: str, watched: _Watched, at: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.time())
        watched.timer = loop.call_later(delay, self._orphan_due, client_id, watched)

    def _orphan_due(self, client_id: str, watched: _Watched) -> None:
        if self._watched.get(client_id) is not watched or client_id in self._pending:
            return  # gone, replaced, or ours to publish from memory
        armed_by = watched.will.armed_by
        if armed_by is not None and watched.winner is None:
            if self.instances.alive(armed_by):  # it beat again: back to the index
                self._unwatch(client_id)
                self._index(client_id, armed_by, watched.current)
                return
            due = self._armed_due(armed_by, watched.will.delay)
            if time.time() < due:  # the will delay still runs
                self._check_later(client_id, watched, due)
                return
        if self._came_back(client_id, watched.will):
            self.spawn(self._tombstone(client_id))  # the will is void
            return
        self.spawn(self._claim(client_id, watched))

    def _armed_due(self, instance: str, delay: float) -> float:
        """When an armed will of ``instance`` is due: once the instance is dead, ``delay``
        after the latest moment its connections can have ended (its last heartbeat, plus the
        interval in which it would have written the next one)."""
        instances = self.instances
        dead_after = instances.dead_after(instance)
        ended_by = instances.last_seen(instance) + instances.beat_every_s
        return max(dead_after, ended_by + delay)

    def _came_back(self, client_id: str, will: StoredWill) -> bool:
        """Has the client connected again since this will's connection left (anywhere)?"""
        if self.connected(client_id):
            return True
        record = self.table.get(owner_key(client_id))
        if record is None or record.value is None:
            return False
        owner = Owner.decode(record.value)
        return owner.connected and owner.nonce != will.nonce

    async def _claim(self, client_id: str, watched: _Watched) -> None:
        me = self.instance
        claim = replace(watched.will, claimed_by=me, after=watched.current)
        try:
            # put() returns once this instance has read its claim back, so every claim before it
            # has been observed: the winner is known.
            await self.table.put(will_key(client_id), claim.encode())
        except (KafkaUnavailable, TimeoutError) as exc:
            log.warning("mqtt.will_claim_failed", client_id=client_id, error=str(exc))
            self._check_later(client_id, watched, time.time() + ORPHAN_GRACE_S)
            return
        if self._came_back(client_id, watched.will):
            await self._tombstone(client_id)
            return
        armed_by = watched.will.armed_by
        if armed_by is not None and self.instances.alive(armed_by):
            # Its heartbeat came after all (it was slow, not dead): leave the will armed.
            if self._watched.get(client_id) is watched and watched.winner == me:
                await self._remember(watched.will)
            return
        if self._watched.get(client_id) is watched and watched.winner == me:
            log.info("mqtt.will_claimed", client_id=client_id, owner_nonce=watched.will.nonce)
            await self._publish(claim, forget=True)

    def load(self, items: list[tuple[bytes | None, Message]]) -> None:
        for key, record in items:
            if client_of_will_key(key) is not None:
                self.observe(record)

    def pending(self) -> int:
        return len(self._pending)


def _message_json(message: Message) -> dict[str, Any]:
    return {
        "topic": message.topic,
        "key": _b64(message.key),
        "value": _b64(message.value),
        "headers": [[name, _b64(value)] for name, value in message.headers],
    }


def _message_of(raw: dict[str, Any]) -> Message:
    return Message(
        str(raw["topic"]),
        _unb64(raw["key"]),
        _unb64(raw["value"]),
        tuple((str(name), _unb64(value) or b"") for name, value in raw["headers"]),
    )


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _delay(client: WillOwner, connect: Connect) -> float:
    """Seconds the will waits once the connection is gone: the will delay, at most the
    session's expiry."""
    delay = connect.will_properties.will_delay_interval or 0
    if client.expiry is not None:
        delay = min(delay, client.expiry)
    return float(delay)


def _without_delay(props: Properties) -> Properties:
    return replace(props, will_delay_interval=None)


def _refused(client: WillOwner, exc: PublishRefused) -> None:
    log.warning(
        "mqtt.will_refused",
        client_id=client.client_id,
        reason_code=f"0x{exc.code:02X}",
        detail=exc.reason,
    )
