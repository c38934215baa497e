"""Idempotency-Key: a ledger in a compacted Kafka topic that every bridge instance follows.

Kafka is the only state, so "has this key been used?" is answered by replaying one topic
(``edgebridge.idempotency`` by default) into a :class:`Ledger`. The protocol per key:

1. ``claim``: an instance about to produce writes a claim record (fingerprint, lease).
2. It waits until its own follower of the topic has read past that claim. Every instance reads
   the same partition in the same order, so they all agree which claim came first: the first
   claim on a free (or expired) key wins, later claims lose. Only the winner produces.
3. ``complete``: the winner stores the response it sent (status, headers, body) with an expiry;
   a retry with the same key and fingerprint, on any instance, after any restart, replays it.
   ``release``: the winner failed before producing (Kafka refused); the key is free again.

Why at most one record, and the remaining window: a claim's lease (``lease_s``) lets another
instance take over a key whose winner died between claim and complete. If the winner did not die
but stalled past its lease, or died after Kafka acknowledged the record but before its
``complete`` was stored, a retry after the lease produces a second record. Both carry the same
``correlation-id`` header (derived from the key), so a consumer can drop the duplicate.

Claims are decided by the record's own timestamp (not the reader's clock), so a ledger rebuilt
after a restart decides exactly as the live one did. With compaction only the newest record per
key survives: a losing claim written after the winner's is superseded by the winner's
``complete``; if the winner never completes, the survivor is a pending claim that expires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.kafka.hub import Hub, Start, Subscription
from bridge.kafka.producer import Producer
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.strict_json import canonical
from protocols.http.asgi import Response

log = structlog.get_logger(__name__)

DEFAULT_TOPIC = "edgebridge.idempotency"
MAX_KEY_LENGTH = 255
PENDING = "pending"
COMPLETE = "complete"


def parse_key(raw: str | None) -> str | None:
    """The key from an ``Idempotency-Key`` header: an sf-string (quoted) or, as Stripe sends
    it, bare. Raises ValueError if it is empty, too long or not printable ASCII."""
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value:
        raise ValueError("Idempotency-Key is empty")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
    if not all(0x20 <= ord(c) < 0x7F for c in value):
        raise ValueError("Idempotency-Key must be printable ASCII")
    return value


def scope_key(route: str, identity: str | None, key: str) -> bytes:
    """The ledger key: the idempotency key within its route and the caller's identity."""
    return json.dumps([route, identity, key], separators=(",", ":")).encode()


def correlation_id(scoped: bytes) -> str:
    """A correlation id derived from the scoped key: every attempt with one key carries the
    same id, so a downstream consumer can drop a duplicate."""
    digest = hashlib.sha256(b"edgebridge-correlation\x00" + scoped).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def fingerprint(
    method: str, path: str, content_type: str | None, body: bytes, document: Any = None
) -> str:
    """What makes two requests with one Idempotency-Key "the same request".

    A JSON body (``document``, as parsed at the edge) counts by its canonical form: the same
    members in any order, with any white space, are the same bet (a client library that
    re-serialises a retry must not get a 422). Any other body counts byte for byte.
    """
    digest = hashlib.sha256()
    if document is not None:
        parts: tuple[bytes, ...] = (method.encode(), path.encode(), b"json", canonical(document))
    else:
        parts = (method.encode(), path.encode(), (content_type or "").encode(), body)
    for part in parts:
        digest.update(part)
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    """What the ledger knows about one scoped key."""

    state: str  # PENDING or COMPLETE
    claim: str
    fingerprint: str
    expires_at_ms: int  # lease end while pending; retention end once complete
    stored: Mapping[str, Any] | None = None  # the response as written; decoded on replay only

    @property
    def response(self) -> Response | None:
        return None if self.stored is None else decode_response(self.stored)

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms <= now_ms


def encode_response(response: Response) -> dict[str, Any]:
    return {
        "status": response.status,
        "headers": [list(h) for h in response.headers],
        "body": base64.b64encode(response.body).decode(),
    }


def decode_response(data: Mapping[str, Any]) -> Response:
    headers = [(str(k), str(v)) for k, v in data["headers"]]
    return Response(int(data["status"]), headers, base64.b64decode(data["body"]))


class Ledger:
    """The state machine every instance runs over the idempotency topic (sans-io)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self.entries.pop(key, None)
            return
        try:
            record = json.loads(value)
            kind = record["kind"]
            claim = str(record["claim"])
        except (ValueError, KeyError, TypeError):
            log.warning("idempotency.bad_record", key=key.decode(errors="replace"))
            return
        current = self.entries.get(key)
        if kind == "claim":
            at = int(record["at"])
            if current is None or current.expired(at):
                self.entries[key] = Entry(
                    PENDING, claim, str(record["fp"]), int(record["lease_until"])
                )
        elif current is not None and current.claim == claim:
            if kind == "complete":
                response = record.get("response")
                if not isinstance(response, dict):
                    log.warning("idempotency.bad_record", key=key.decode(errors="replace"))
                    return
                self.entries[key] = Entry(
                    COMPLETE, claim, current.fingerprint, int(record["expires_at"]), response
                )
            elif kind == "release":
                del self.entries[key]

    def lookup(self, key: bytes, now_ms: int) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None and entry.expired(now_ms):
            return None
        return entry

    def prune(self, now_ms: int) -> int:
        """Forget expired entries (they no longer decide anything); returns how many."""
        gone = [key for key, entry in self.entries.items() if entry.expired(now_ms)]
        for key in gone:
            del self.entries[key]
        return len(gone)


class LedgerUnavailable(Exception):
    """The ledger could not confirm a claim in time (Kafka slow or unreachable)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """The outcome of a claim: ``won`` (produce now) or the entry that was there first."""

    won: bool
    claim: str
    entry: Entry | None = None


class IdempotencyStore:
    """The ledger of one bridge process, fed by the hub, written through the producer."""

    def __init__(
        self, producer: Producer, hub: Hub, topic: str = DEFAULT_TOPIC, confirm_s: float = 10.0
    ) -> None:
        self.producer = producer
        self.hub = hub
        self.topic = topic
        self.confirm_s = confirm_s
        self.ledger = Ledger()
        self.position: dict[int, int] = {}
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._subscription: Subscription | None = None
        # Offsets of records this process wrote that the ledger may not have read back yet.
        self._own_writes: dict[int, set[int]] = {}
        self._prune_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the topic from its start; return once everything written so far is applied."""
        feed = await self.hub.feed(self.topic, table=True)
        self._subscription = await self.hub.subscribe(self.topic, self, Start.EARLIEST)
        if self._subscription.catch_up is not None:
            await self._subscription.catch_up  # read from Kafka, then joined the feed
        # Joined: everything before the feed's position has been delivered here, including
        # partitions with nothing left to deliver (a log start moved on by retention).
        self._advance(feed.position)
        self._prune_task = asyncio.create_task(self._prune_forever(), name="idempotency-prune")
        log.info("idempotency.ready", topic=self.topic, keys=len(self.ledger.entries))

    async def stop(self) -> None:
        if self._prune_task is not None:
            self._prune_task.cancel()
        if self._subscription is not None:
            self._subscription.close()

    # -- the hub delivers here ----------------------------------------------------------------

    def deliver(self, record: Message, position: Position) -> None:
        self.ledger.apply(record.key, record.value)
        self._advance(position)

    def _advance(self, position: Mapping[int, int]) -> None:
        for partition, offset in position.items():
            if offset > self.position.get(partition, 0):
                self.position[partition] = offset
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        still = []
        for partition, offset, future in self._waiters:
            if future.done():
                continue
            if self.position.get(partition, 0) >= offset:
                future.set_result(None)
            else:
                still.append((partition, offset, future))
        self._waiters = still

    async def _reached(self, partition: int, offset: int, timeout: float | None) -> None:
        if self.position.get(partition, 0) >= offset:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((partition, offset, future))
        await asyncio.wait_for(future, timeout)

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(60)
            self.ledger.prune(_now_ms())

    # -- the protocol -------------------------------------------------------------------------

    def lookup(self, key: bytes) -> Entry | None:
        return self.ledger.lookup(key, _now_ms())

    async def claim(self, key: bytes, fp: str, lease_s: float) -> Claimed:
        """Write a claim and wait until the ledger says who won. Raises KafkaUnavailable or
        LedgerUnavailable."""
        claim = secrets.token_hex(16)  # as uuid4().hex, without building a UUID
        at = _now_ms()
        value = {
            "kind": "claim",
            "claim": claim,
            "fp": fp,
            "at": at,
            "lease_until": at + int(lease_s * 1000),
        }
        body, partition, offset = await self._send(key, value, at)
        await asyncio.sleep(0)  # let sibling writes acked in the same response note their offsets
        if self._only_own_writes_before(partition, offset):
            # Everything before our claim on its partition is either applied already or our
            # own write (for another key, or an earlier, already applied, state of this one):
            # the read-back cannot decide differently, so decide now and skip a fetch cycle.
            self.ledger.apply(key, body)
        else:
            try:
                await self._reached(partition, offset + 1, self.confirm_s)
            except TimeoutError as exc:
                raise LedgerUnavailable(
                    "the idempotency ledger did not read back our claim in time"
                ) from exc
        entry = self.ledger.entries.get(key)
        if entry is not None and entry.claim == claim:
            return Claimed(True, claim)
        return Claimed(False, claim, entry)

    async def complete(self, key: bytes, claim: str, response: Response, ttl_s: float) -> None:
        at = _now_ms()
        value = {
            "kind": "complete",
            "claim": claim,
            "at": at,
            "expires_at": at + int(ttl_s * 1000),
            "response": encode_response(response),
        }
        body = await self._write(key, value, at)
        # Read our own write now rather than after the feed's next fetch, so a retry that
        # follows the response on this instance replays. Applying it early is safe: only this
        # winner writes records for its claim, so nothing between claim and complete can change
        # what the ledger decides when the record is read back (and applied again).
        self.ledger.apply(key, body)

    async def release(self, key: bytes, claim: str) -> None:
        at = _now_ms()
        self.ledger.apply(
            key, await self._write(key, {"kind": "release", "claim": claim, "at": at}, at)
        )

    async def _write(self, key: bytes, value: dict[str, Any], at: int) -> bytes:
        return (await self._send(key, value, at))[0]

    async def _send(self, key: bytes, value: dict[str, Any], at: int) -> tuple[bytes, int, int]:
        """Produce a ledger record (acks=all); note its offset as our own."""
        body = json.dumps(value, separators=(",", ":")).encode()
        produced = await self.producer.send(Message(self.topic, key, body, timestamp_ms=at), "all")
        self._own_writes.setdefault(produced.partition, set()).add(produced.offset)
        return body, produced.partition, produced.offset

    def _only_own_writes_before(self, partition: int, offset: int) -> bool:
        """Is every record between what the ledger has applied and ``offset`` one we wrote?"""
        own = self._own_writes.get(partition, set())
        applied = self.position.get(partition, 0)
        own.difference_update([o for o in own if o < applied])
        return all(o in own for o in range(applied, offset))


def _now_ms() -> int:
    return int(time.time() * 1000)
