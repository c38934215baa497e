"""Idempotency keys for every front-end: a ledger sharded by partition, each key decided by the
instance that owns it.

This is the protocol-neutral core (HTTP, gRPC and MCP share it): claim a key, store an *opaque
outcome* (bytes the front-end encodes: for HTTP the status, headers and body, see
``protocols/http/idempotency.py``), replay it, tell "in flight" and "another body" apart. What a
front-end answers in its own protocol (409 + Retry-After, 422, a gRPC status...) and how it
reaches the owner of a key it does not own (HTTP forwards) stays in the front-end.

The ledger is a compacted topic (``edgebridge.ledger``, a fixed number of partitions). Its
partitions are owned through a Kafka consumer group (:mod:`bridge.kafka.owned_table`): each
instance holds only the keys of the partitions it owns, and knows every other partition's owner
from the last rebalance. A request whose key another instance owns is forwarded to that owner
(for HTTP: ``protocols/http/forwarding.py``); the owner decides in its own memory who came first, so the
protocol per key costs two Kafka round trips before the answer:

1. ``claim`` (acks=all): the fingerprint, the target topic, a *hint* per partition (an offset the
   record will be at or after: what this process last saw acknowledged there) and what a
   rebuilt response needs. The owner put the claim into its table *before* writing it, with no
   ``await`` in between, so a concurrent request for the key sees it pending (409).
2. the record itself, with header ``edgebridge-claim: <claim id>``; then the answer.

Off the critical path the owner stores ``complete`` (the response) in the ledger; it applied it
to its table already, so a retry that follows the answer replays at once. A produce that Kafka
refused writes ``release`` (the key is free again).

A new owner (after a rebalance, a crash or a restart) that finds a claim without a completion
recovers it: it reads the target topic from the hints for the claim id header. Found: it
rebuilds the outcome through the front-end's ``rebuild`` (HTTP: ``202`` with the record's
coordinates, or the reply ``Location``) and stores it. Not found: it releases the key. Retries get ``409`` meanwhile. An owner that loses
partitions in a rebalance first lets its started produces finish (the group waits for it), so
the next owner's search sees them. Windows that remain (docs/http.md): an owner stalled or cut
off past the group's session timeout while its produce is still on the way, and a produce whose
outcome was unknown (Kafka did not answer in time) that Kafka still stores after the search.

Record format (binary, big-endian; one bytes object per key in memory):
``version u8, kind u8, claim id 16 B, fingerprint digest 16 B, until_ms i64`` then per kind:
claim: target topic (u16 length + UTF-8), hints (u16 count, then i32 partition + i64 offset
each), recipe (u16 length + UTF-8: the reply location, or empty); complete: the outcome bytes
(HTTP's: status u16, header count u16, each name and value as u16 length + latin-1, the body). A release is a header
with ``until_ms`` = its own time (already expired: it only removes its own claim).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import struct
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.kafka.owned_table import NotSettled, OwnedTables, Placement
from bridge.kafka.producer import Producer
from bridge.kafka.record_search import find_by_header
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Message
from bridge.model.strict_json import canonical

log = structlog.get_logger(__name__)

DEFAULT_TOPIC = "edgebridge.ledger"
DEFAULT_PARTITIONS = 12
LINGER_S = 0.005  # the longest a completion waits for a claim to ride with (see _later)
MAX_KEY_LENGTH = 255
CLAIM_HEADER = "edgebridge-claim"
PENDING = "pending"
COMPLETE = "complete"

VERSION = 1
KIND_CLAIM = ord("C")
KIND_COMPLETE = ord("D")
KIND_RELEASE = ord("R")
_HEAD = struct.Struct(">BB16s16sq")  # version, kind, claim id, fingerprint digest, until_ms
_UNTIL = struct.Struct(">q")
_UNTIL_AT = 34  # offset of until_ms in a record
_U16 = struct.Struct(">H")
_HINT = struct.Struct(">iq")


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
    # 0x20-0x7E exactly: ASCII, and no control character (nor DEL); C-speed string methods,
    # where a generator over the characters was ~6 us for a 32-character key.
    if not (value.isascii() and value.isprintable()):
        raise ValueError("Idempotency-Key must be printable ASCII")
    return value


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options makes one per call


def scope_key(route: str, identity: str | None, key: str) -> bytes:
    """The ledger key: the idempotency key within its route and the caller's identity."""
    return _COMPACT.encode([route, identity, key]).encode()


def correlation_id(scoped: bytes) -> str:
    """A correlation id derived from the scoped key: every attempt with one key carries the
    same id, so a downstream consumer can drop a duplicate."""
    digest = hashlib.sha256(b"edgebridge-correlation\x00" + scoped).digest()
    return base64url(digest[:16])


def base64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


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


def fingerprint_digest(fp: str) -> bytes:
    """16 bytes standing for a fingerprint in the ledger, whatever form ``fingerprint()`` has."""
    return hashlib.blake2b(fp.encode(), digest_size=16).digest()


# -- records ----------------------------------------------------------------------------------


def encode_claim(
    claim: bytes,
    fp: bytes,
    until_ms: int,
    topic: str,
    hints: Mapping[int, int],
    recipe: str = "",
) -> bytes:
    parts = [_HEAD.pack(VERSION, KIND_CLAIM, claim, fp, until_ms), _text(topic)]
    parts.append(_U16.pack(len(hints)))
    parts += [_HINT.pack(p, o) for p, o in sorted(hints.items())]
    parts.append(_text(recipe))
    return b"".join(parts)


def encode_complete(claim: bytes, fp: bytes, until_ms: int, outcome: bytes) -> bytes:
    """A completion: the front-end's outcome bytes, stored as they are."""
    return _HEAD.pack(VERSION, KIND_COMPLETE, claim, fp, until_ms) + outcome


def encode_release(claim: bytes, fp: bytes, at_ms: int) -> bytes:
    return _HEAD.pack(VERSION, KIND_RELEASE, claim, fp, at_ms)


def _text(value: str, encoding: str = "utf-8") -> bytes:
    raw = value.encode(encoding)
    return _U16.pack(len(raw)) + raw


def _read_text(raw: bytes, at: int, encoding: str = "utf-8") -> tuple[str, int]:
    (size,) = _U16.unpack_from(raw, at)
    return raw[at + 2 : at + 2 + size].decode(encoding), at + 2 + size


def until_of(record: bytes) -> int:
    return int(_UNTIL.unpack_from(record, _UNTIL_AT)[0])


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's record, decoded for a decision (only when a request needs it)."""

    state: str  # PENDING or COMPLETE
    claim: bytes
    fingerprint: bytes  # fingerprint_digest()
    expires_at_ms: int
    raw: bytes

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        _, kind, claim, fp, until = _HEAD.unpack_from(raw)
        return cls(COMPLETE if kind == KIND_COMPLETE else PENDING, claim, fp, until, raw)

    @property
    def outcome(self) -> bytes | None:
        """The stored outcome bytes of a completed key; None while pending."""
        if self.state != COMPLETE:
            return None
        return self.raw[_HEAD.size :]

    def target(self) -> tuple[str, dict[int, int], str]:
        """A claim's target topic, hints and recipe."""
        topic, at = _read_text(self.raw, _HEAD.size)
        (count,) = _U16.unpack_from(self.raw, at)
        at += 2
        hints = {}
        for _ in range(count):
            partition, offset = _HINT.unpack_from(self.raw, at)
            hints[partition] = offset
            at += _HINT.size
        recipe, _ = _read_text(self.raw, at)
        return topic, hints, recipe


class LedgerPartition:
    """The ledger's state for one partition (sans-io): scoped key -> its newest deciding record.

    Rules, the same live and when rebuilt from the log: a claim takes a key that is free (or
    whose record expired); a complete counts for the claim it names, or on a free key (after
    compaction a complete is all that is left of a key); a release removes only its own claim.
    Expired records are not kept.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def apply(
        self,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int = 0,
        now_ms: int | None = None,
    ) -> None:
        if key is None:
            return
        if value is None:  # a tombstone: the key is forgotten
            self.entries.pop(key, None)
            return
        if len(value) < _HEAD.size or value[0] != VERSION:
            log.warning("idempotency.bad_record", key=key.decode(errors="replace"))
            return
        now = _now_ms() if now_ms is None else now_ms
        current = self.entries.get(key)
        live = current is not None and until_of(current) > now
        if until_of(value) <= now:  # a release, or a record past its expiry
            if current is not None and (not live or current[2:18] == value[2:18]):
                del self.entries[key]
            return
        kind = value[1]
        if kind == KIND_CLAIM:
            if not live:
                self.entries[key] = value
        elif kind == KIND_COMPLETE and (not live or current[2:18] == value[2:18]):  # type: ignore[index]
            self.entries[key] = value

    def lookup(self, key: bytes, now_ms: int | None = None) -> Entry | None:
        raw = self.entries.get(key)
        if raw is None or until_of(raw) <= (_now_ms() if now_ms is None else now_ms):
            return None
        return Entry.decode(raw)

    def pending(self) -> list[tuple[bytes, Entry]]:
        return [(k, Entry.decode(v)) for k, v in self.entries.items() if v[1] == KIND_CLAIM]

    def prune(self, now_ms: int) -> int:
        """Forget expired entries (they no longer decide anything); returns how many."""
        gone = [key for key, raw in self.entries.items() if until_of(raw) <= now_ms]
        for key in gone:
            del self.entries[key]
        return len(gone)


# -- the ledger of one process ----------------------------------------------------------------


class LedgerUnavailable(Exception):
    """No owner of the key's partition is known (a rebalance is under way) or Kafka is away."""


# Made per request: a plain slots class (a frozen dataclass's __init__ costs ~0.1 us a field).
@dataclass(slots=True, eq=False)
class Claimed:
    """A claim this owner made (in memory and, once :meth:`IdempotencyStore.claim` returns,
    in Kafka)."""

    key: bytes
    claim: bytes
    fp: bytes
    partition: int
    done: asyncio.Future[None]  # set when its produce (and release/complete) is settled


# Made per request: a plain slots class (a frozen dataclass's __init__ costs ~0.1 us a field).
@dataclass(slots=True, eq=False)
class Local:
    """This instance owns the key: its table and any entry."""

    table: LedgerPartition
    partition: int
    entry: Entry | None


@dataclass(frozen=True, slots=True)
class Remote:
    """Another instance owns the key."""

    address: str


class InFlight(Exception):
    """The key's first request is still being processed (HTTP: 409 + Retry-After)."""


class OtherRequest(Exception):
    """The key was used for a different request (HTTP: 422)."""


def decide(entry: Entry, fp: str) -> bytes:
    """A key already in the ledger: the stored outcome to replay, or InFlight / OtherRequest."""
    if entry.fingerprint != fingerprint_digest(fp):
        raise OtherRequest("this idempotency key was used for a different request")
    outcome = entry.outcome
    if outcome is None:
        raise InFlight("a request with this idempotency key is still being processed")
    return outcome


# A claim's record found by a new owner and the claim's recipe -> the outcome it stands for.
Rebuild = Callable[[Message, str], bytes]


class IdempotencyStore:
    """This process's share of the ledger, owned through a consumer group."""

    def __init__(
        self,
        producer: Producer,
        settings: KafkaSettings,
        bootstrap: str,
        address: str,
        rebuild: Rebuild,
        topic: str = DEFAULT_TOPIC,
        session_timeout_ms: int = 6000,
        ttl_s: float = 24 * 3600.0,
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = topic
        self.rebuild = rebuild
        self.ttl_ms = int(ttl_s * 1000)  # how long a pending claim is remembered at most
        self.settle_s = producer.timeout_s
        self.tables: OwnedTables[LedgerPartition] = OwnedTables(
            producer,
            settings,
            bootstrap,
            topic,
            group=f"edgebridge-ledger.{topic}",
            address=address,
            new_table=lambda _: LedgerPartition(),
            session_timeout_ms=session_timeout_ms,
            on_loaded=self._loaded,
            on_revoke=self._revoking,
            revoke_timeout_s=3 * producer.timeout_s,
            sole_writer=True,  # the owner applies its own writes: no reading them back
        )
        self._in_flight: dict[bytes, Claimed] = {}  # claim id -> claims this process works on
        self._recovering: set[bytes] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._recoveries = asyncio.Semaphore(4)
        self._prune_task: asyncio.Task[None] | None = None
        self._lazy: list[tuple[Claimed, bytes, int]] = []  # completions and releases to write
        self._lazy_timer: asyncio.TimerHandle | None = None

    async def start(self, ready_timeout_s: float = 30.0) -> None:
        await self.tables.start(ready_timeout_s)
        self._prune_task = self._spawn(self._prune_forever(), "idempotency-prune")
        held = self.tables.held_keys()
        log.info(
            "idempotency.ready",
            topic=self.topic,
            partitions=sorted(self.tables.owned()),
            keys=held,
        )

    async def stop(self) -> None:
        if self._prune_task is not None:
            self._prune_task.cancel()
        self._flush_lazy()
        pending = [c.done for c in self._in_flight.values()]
        if pending:  # let started writes finish before the group hands the partitions on
            await asyncio.wait(pending, timeout=2 * self.producer.timeout_s)
        await self.tables.stop()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- where a key is decided ---------------------------------------------------------------

    def locate_now(self, key: bytes) -> Local | Remote | None:
        """:meth:`locate` without waiting: None while ownership is moving."""
        partition = self.tables.partition_of(key)
        placement = self.tables.placement_now(partition)
        return None if placement is None else self._located(key, partition, placement)

    async def locate(self, key: bytes) -> Local | Remote:
        """This instance's table for ``key`` or the owner's address. Raises LedgerUnavailable."""
        partition = self.tables.partition_of(key)
        try:
            placement: Placement[LedgerPartition] = await self.tables.placement(
                partition, self.settle_s
            )
        except NotSettled as exc:
            raise LedgerUnavailable(f"{exc}: a rebalance is under way") from exc
        return self._located(key, partition, placement)

    @staticmethod
    def _located(
        key: bytes, partition: int, placement: Placement[LedgerPartition]
    ) -> Local | Remote:
        if placement.table is None:
            assert placement.owner is not None
            return Remote(placement.owner)
        return Local(placement.table, partition, placement.table.lookup(key))

    # -- the protocol (on the owner) ------------------------------------------------------------

    def claim(
        self,
        where: Local,
        key: bytes,
        fp: str,
        topic: str,
        hints: Mapping[int, int],
        recipe: str = "",
        claim: bytes | None = None,
    ) -> asyncio.Future[Claimed]:
        """Take a free key: in memory at once (call it in the loop turn :meth:`locate` found
        it free), then in Kafka. The future (await it, or add a callback) is done when Kafka
        acknowledged the claim, or fails with KafkaUnavailable (the key is free again then).
        A callback on the record's future, not a coroutine: this runs once per idempotent
        request. ``claim``: the claim's id if the caller chose it already (to put it in its
        record's headers), else a new one."""
        claim = claim or secrets.token_bytes(16)
        digest = fingerprint_digest(fp)
        at = _now_ms()
        value = encode_claim(claim, digest, at + self.ttl_ms, topic, hints, recipe)
        where.table.entries[key] = value
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        claimed = Claimed(key, claim, digest, where.partition, done)
        self._in_flight[claim] = claimed
        self._flush_lazy()  # queued completions join this claim's produce request
        result: asyncio.Future[Claimed] = loop.create_future()

        def written(future: asyncio.Future[Any]) -> None:
            error = (
                KafkaUnavailable("the claim's write was cancelled")
                if future.cancelled()
                else future.exception()
            )
            if error is not None:
                # Maybe in Kafka, maybe not: a new owner finding it would search, find nothing
                # and release; here the key is free again at once.
                self._settle(claimed, release_locally=True, table=where.table)
                if not isinstance(error, KafkaUnavailable):
                    error = KafkaUnavailable(f"Kafka did not acknowledge the claim: {error!r}")
                result.set_exception(error)
            else:
                result.set_result(claimed)

        try:
            if self.tables.write_soon(key, value, at, written):
                return result
        except KafkaUnavailable as exc:
            self._settle(claimed, release_locally=True, table=where.table)
            result.set_exception(exc)
            return result

        async def write() -> None:  # the producer or the topic's metadata not ready yet
            try:
                await self.tables.write(key, value, at)
            except BaseException as exc:
                self._settle(claimed, release_locally=True, table=where.table)
                result.set_exception(
                    exc if isinstance(exc, KafkaUnavailable) else KafkaUnavailable(repr(exc))
                )
                if isinstance(exc, asyncio.CancelledError):
                    raise  # stopping; the caller has its answer in the future either way
                return
            result.set_result(claimed)

        self._spawn(write(), "idempotency-claim")
        return result

    def complete(self, claimed: Claimed, outcome: bytes, ttl_s: float) -> None:
        """Store the outcome: in this table now, in Kafka off the critical path."""
        at = _now_ms()
        value = encode_complete(claimed.claim, claimed.fp, at + int(ttl_s * 1000), outcome)
        table = self.tables.local(claimed.partition)
        if table is not None:
            table.apply(claimed.key, value)
        self._later(claimed, value, at)

    def release(self, claimed: Claimed) -> None:
        """Kafka refused the record: the key is free again (here now, in Kafka soon)."""
        at = _now_ms()
        value = encode_release(claimed.claim, claimed.fp, at)
        table = self.tables.local(claimed.partition)
        if table is not None:
            table.apply(claimed.key, value)
        self._later(claimed, value, at)

    def unknown_outcome(self, claimed: Claimed) -> None:
        """Kafka did not answer the produce: it may still store the record. The key stays
        pending (409) and is recovered like a dead owner's claim once Kafka can no longer take
        the record (two producer timeouts)."""
        self._settle(claimed)

        async def later() -> None:
            await asyncio.sleep(2 * self.producer.timeout_s)
            table = self.tables.local(claimed.partition)
            entry = table.lookup(claimed.key) if table is not None else None
            if table is not None and entry is not None and entry.claim == claimed.claim:
                await self._recover(claimed.partition, table, claimed.key, entry)

        self._spawn(later(), "idempotency-unknown")

    def _later(self, claimed: Claimed, value: bytes, at: int) -> None:
        """Queue a completion or release: it rides with the next claim (same produce request,
        same batch when the partition is the same) or goes out after ``LINGER_S``.

        Measured (bench/produce_path.py, produce requests counted): written at once, the
        completions of one loop turn went out in a produce request of their own, between the
        records' and the next claims', one more request and batch per partition for the broker
        per round (broker CPU per idempotent request ~2x). Nothing waits for a completion: the
        table has it already, and an owner that dies before writing it leaves a claim that the
        next owner recovers from the record (as before: the completion was always written after
        the answer)."""
        self._lazy.append((claimed, value, at))
        if self._lazy_timer is None:
            self._lazy_timer = asyncio.get_running_loop().call_later(LINGER_S, self._flush_lazy)

    def _flush_lazy(self) -> None:
        """Hand every queued completion and release to the producer now, in order (a release
        must reach its partition before a new claim of the same key: claim() calls this)."""
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        lazy, self._lazy = self._lazy, []
        for claimed, value, at in lazy:
            self._write_soon(claimed, value, at)

    def _write_soon(self, claimed: Claimed, value: bytes, at: int) -> None:
        """Write a completion or release and settle ``claimed`` when Kafka answered: a
        callback on the record's future, not a task, coroutine and timeout per request."""

        def written(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                error = "cancelled" if future.cancelled() else repr(future.exception())
                # A new owner would search for the record and rebuild the same answer.
                log.warning("idempotency.write_failed", error=error)
            self._settle(claimed)

        try:
            if self.tables.write_soon(claimed.key, value, at, written):
                return
        except KafkaUnavailable as exc:
            log.warning("idempotency.write_failed", error=str(exc))
            self._settle(claimed)
            return
        self._spawn(self._write_then_settle(claimed, value, at), "idempotency-write")  # not ready

    async def _write_then_settle(self, claimed: Claimed, value: bytes, at: int) -> None:
        try:
            await self.tables.write(claimed.key, value, at)
        except KafkaUnavailable as exc:
            # A new owner would search for the record and rebuild the same answer.
            log.warning("idempotency.write_failed", error=str(exc))
        finally:
            self._settle(claimed)

    def _settle(
        self, claimed: Claimed, release_locally: bool = False, table: LedgerPartition | None = None
    ) -> None:
        self._in_flight.pop(claimed.claim, None)
        if release_locally and table is not None:
            current = table.entries.get(claimed.key)
            if current is not None and current[2:18] == claimed.claim:
                del table.entries[claimed.key]
        if not claimed.done.done():
            claimed.done.set_result(None)

    # -- ownership changes --------------------------------------------------------------------

    async def _revoking(self, partitions: set[int]) -> None:
        """Before the group hands ``partitions`` on: let their started produces (and the
        writes after them) finish, so the next owner's search finds the records."""
        self._flush_lazy()
        waiting = [c.done for c in self._in_flight.values() if c.partition in partitions]
        if waiting:
            log.info("idempotency.handover_wait", claims=len(waiting))
            await asyncio.wait(waiting)

    def _loaded(self, partition: int, table: LedgerPartition) -> None:
        """A partition read to its end: recover the claims nobody here is working on."""
        orphans = [
            (key, entry)
            for key, entry in table.pending()
            if entry.claim not in self._in_flight and entry.claim not in self._recovering
        ]
        for key, entry in orphans:
            self._recovering.add(entry.claim)
            self._spawn(self._recover(partition, table, key, entry), "idempotency-recover")
        if orphans:
            log.info("idempotency.recovering", partition=partition, claims=len(orphans))

    async def _recover(
        self, partition: int, table: LedgerPartition, key: bytes, entry: Entry
    ) -> None:
        """A claim without a completion: did its record reach Kafka? Found: store the rebuilt
        response. Not found: release the key."""
        topic, hints, recipe = entry.target()
        try:
            async with self._recoveries:
                found = await find_by_header(
                    self.settings,
                    self.bootstrap,
                    topic,
                    hints,
                    CLAIM_HEADER,
                    entry.claim.hex().encode(),
                    timeout=10 * self.producer.timeout_s,
                )
            if self.tables.local(partition) is not table or table.entries.get(key) != entry.raw:
                return  # no longer ours, or the key moved on (its completion was read)
            at = _now_ms()
            if found is None:
                value = encode_release(entry.claim, entry.fingerprint, at)
                log.info("idempotency.recovered", outcome="released", topic=topic)
            else:
                outcome = self.rebuild(found, recipe)
                until = max(entry.expires_at_ms, at + 1)
                value = encode_complete(entry.claim, entry.fingerprint, until, outcome)
                log.info(
                    "idempotency.recovered",
                    outcome="completed",
                    topic=topic,
                    partition=found.partition,
                    offset=found.offset,
                )
            table.apply(key, value)
            await self.tables.write(key, value, at)
        except (KafkaUnavailable, UnknownTopic) as exc:
            log.warning("idempotency.recovery_failed", error=str(exc))
        finally:
            self._recovering.discard(entry.claim)

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(60)
            for table in self.tables.owned().values():
                table.prune(_now_ms())
                await asyncio.sleep(0)  # one partition per loop turn: other work goes between

    def held_keys(self) -> int:
        return self.tables.held_keys()


def _now_ms() -> int:
    return int(time.time() * 1000)
