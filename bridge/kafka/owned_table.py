"""A compacted topic sharded by partition: each instance holds the partitions it owns.

Kafka Streams' model for state that must not be copied onto every instance: the partitions of a
topic are owned through a Kafka consumer group, so each instance holds (and reads) only the
partitions the group assigned it, in one table per partition, and memory and start-up time per
instance follow the instance's share, not the cluster's total. Only the owner of a partition
decides for its keys (in its own memory, so no claim-then-read-back round trip), and the owner
is the only writer of its partition.

Where is everyone else's state? Every member's join metadata carries its advertised address
(``user_data``), and the group leader's assignor hands the whole partition -> address map to
every member in the assignment's ``user_data`` (Kafka Streams' ``StreamsPartitionAssignor`` does
the same for interactive queries). So after each rebalance every instance knows every owner
without another topic or round trip. The assignor is sticky: a member keeps the partitions it
held (their tables stay loaded), and only the difference moves.

Rebalances are eager (aiokafka's protocol): every member gives up all its partitions before the
group re-forms. :meth:`OwnedTables.settled` makes callers wait (up to a timeout) while that is
under way. ``on_revoke`` runs before this instance rejoins, so a caller can finish the writes it
started for a partition before the next owner reads it (Kafka waits for every live member to
rejoin): only a member that is dead or stalled past ``session_timeout_ms`` cannot.

A newly assigned partition is read from its start to the high-water mark of a fetch (Tansu's
``end_offsets`` is a batch short, see docs/tansu-behaviour.md), then it serves. A partition the
instance held before and gets back is read on from where it stopped, not reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError

from bridge.kafka.client_settings import client_options, consumer_options
from bridge.kafka.partitioner import positive_murmur2
from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Produced, new_message
from bridge.telemetry.metrics import OWNED_KEYS, OWNED_PARTITIONS

log = structlog.get_logger(__name__)

# A key is located, then written twice (claim, completion), each write checked against it: the
# pure-Python murmur2 is ~8 us a call here, so each key is hashed once while it is in use.
_key_hash = functools.lru_cache(maxsize=16_384)(positive_murmur2)

FETCH_RECORDS = 20_000
REPORT_S = 5.0  # how often the held-keys gauge is refreshed
# No LeaveGroup on stop: on Tansu a leader that leaves while a rebalance is under way (another
# member left just before) stays the group's leader for ever, and no member ever gets an
# assignment again (docs/tansu-behaviour.md). A member that just goes quiet is expired after its
# session timeout, on Tansu and on Apache Kafka alike; the cost is that a stopping instance's
# keys wait that long (default 6 s) for their next owner instead of moving at once.
LEAVE_GROUP = False  # per getmany: loading a partition is the hot loop of a start


class PartitionTable(Protocol):
    """The state of one partition, built by applying its records in log order."""

    def apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> None: ...

    def __len__(self) -> int:
        """Keys held (for the ``edgebridge_owned_table_keys`` gauge)."""
        ...


T = TypeVar("T", bound=PartitionTable)


class NotSettled(Exception):
    """No owner is known for a partition (a rebalance is under way, or the group is not joined)."""


# Made per request: a plain slots class (a frozen dataclass's __init__ costs ~0.1 us a field).
@dataclass(slots=True, eq=False)
class Placement(Generic[T]):
    """Where a partition's state is: here (``table``) or at another instance (``owner``)."""

    partition: int
    table: T | None
    owner: str | None


class OwnerAssignor(AbstractPartitionAssignor):
    """Sticky, balanced assignment whose result names every partition's owner to every member.

    Member metadata ``user_data``: ``{"address": ..., "held": [partitions]}``. Assignment
    ``user_data`` (the same for every member): ``{"owners": {partition: address}}``.
    """

    name = "edgebridge-owners"
    version = 0

    def __init__(self, address: str, held: Callable[[], Iterable[int]]) -> None:
        self.address = address
        self._held = held
        self.owners: dict[int, str] = {}

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        data = {"address": self.address, "held": sorted(self._held())}
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), _dump(data))

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = sorted({t for m in members.values() for t in m.subscription})
        result: dict[str, dict[str, list[int]]] = {m: {} for m in members}
        owners: dict[str, dict[int, str]] = {}
        for topic in topics:
            partitions = sorted(cluster.partitions_for_topic(topic) or ())
            wanting = sorted(m for m, meta in members.items() if topic in meta.subscription)
            decoded = {m: _load(members[m].user_data) for m in wanting}
            plan = balanced(partitions, {m: decoded[m].get("held", []) for m in wanting})
            owners[topic] = {}
            for member, owned in plan.items():
                result[member][topic] = owned
                for partition in owned:
                    owners[topic][partition] = str(decoded[member].get("address", ""))
        data = _dump({"owners": {t: {str(p): a for p, a in o.items()} for t, o in owners.items()}})
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version,
                [ConsumerProtocolMemberAssignment.Assignment(t, ps) for t, ps in topics_.items()],
                data,
            )
            for member, topics_ in result.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        data = _load(assignment.user_data)
        owners: dict[int, str] = {}
        for by_partition in data.get("owners", {}).values():
            owners.update({int(p): str(a) for p, a in by_partition.items()})
        self.owners = owners


def balanced(partitions: list[int], held: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Each member gets ``len(partitions) // len(members)`` or one more, keeping what it held
    as far as that allows (members and partitions in sorted order: every leader computes the
    same plan)."""
    members = sorted(held)
    if not members:
        return {}
    base, extra = divmod(len(partitions), len(members))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(members)}
    plan: dict[str, list[int]] = {m: [] for m in members}
    free = set(partitions)
    for member in members:
        for partition in sorted(set(held[member])):
            if partition in free and len(plan[member]) < quota[member]:
                plan[member].append(partition)
                free.discard(partition)
    for partition in sorted(free):
        member = min(members, key=lambda m: (len(plan[m]) - quota[m], m))
        plan[member].append(partition)
    return {m: sorted(ps) for m, ps in plan.items()}


def _dump(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _load(raw: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: OwnedTables[Any]) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner._assigned({tp.partition for tp in assigned})


class OwnedTables(Generic[T]):
    """The partitions of ``topic`` this instance owns, each as a table built by ``new_table``.

    ``on_loaded(partition, table)`` runs once a newly assigned partition has been read to its
    end (before it serves); ``on_revoke(partitions)`` runs before they are given up (bounded by
    ``revoke_timeout_s``).

    ``sole_writer``: the caller writes a partition only while it owns it and applies each write
    to the table itself (the ledger). Then a loaded partition is paused: reading back its own
    writes cost the owner a fetch and a record decode per write (cProfile of
    bench/produce_path.py: the ledger's fetches were ~15 % of an idempotent request's profiled
    time) and told it nothing new. A partition held across a rebalance is read on from where it
    was paused, so whatever another owner wrote in between is applied in log order (re-applying
    this instance's own writes on top of its table changes nothing: the table's rules key on
    claim ids). The cost: a write by a former owner stalled past its session (the window
    docs/http.md names) is no longer applied here; that owner's claim was recovered at load.
    """

    def __init__(
        self,
        producer: Producer,
        settings: KafkaSettings,
        bootstrap: str,
        topic: str,
        group: str,
        address: str,
        new_table: Callable[[int], T],
        *,
        session_timeout_ms: int = 6000,
        on_loaded: Callable[[int, T], None] | None = None,
        on_revoke: Callable[[set[int]], Awaitable[None]] | None = None,
        revoke_timeout_s: float = 10.0,
        sole_writer: bool = False,
    ) -> None:
        self.sole_writer = sole_writer
        self.producer = producer
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.address = address
        self.new_table = new_table
        self.session_timeout_ms = session_timeout_ms
        self.on_loaded = on_loaded
        self.on_revoke = on_revoke
        self.revoke_timeout_s = revoke_timeout_s
        self.partitions = 0  # the topic's partition count, from metadata
        self.assignor = OwnerAssignor(address, lambda: list(self._tables))
        self.generation = 0  # assignments received
        self.records_read = 0
        self._tables: dict[int, T] = {}  # held: owned now, or kept from before a rebalance
        self._position: dict[int, int] = {}  # next offset to apply, per held partition
        self._owned: set[int] = set()
        self._loaded: set[int] = set()  # owned and read to the end: these serve
        self._owners: dict[int, str] = {}
        self._stable = False  # between an assignment and the next revocation
        self._changed = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        # Set on ownership changes and every REPORT_S, never per record (and set, not
        # computed on scrape: under --workers /metrics adds up every worker's written values).
        self._keys_gauge = OWNED_KEYS.labels(topic)
        self._partitions_gauge = OWNED_PARTITIONS.labels(topic)
        self._reported = 0.0

    def held_keys(self) -> int:
        return sum(len(self._tables[p]) for p in self._loaded if p in self._tables)

    def _report(self) -> None:
        self._keys_gauge.set(self.held_keys())
        self._partitions_gauge.set(len(self._loaded))
        self._reported = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, ready_timeout_s: float | None = None) -> None:
        """Join the group; with ``ready_timeout_s``, wait (that long at most) until this
        instance's first share is loaded."""
        options = consumer_options(self.settings, self.bootstrap, f"owned-{self.topic}")
        options.update(
            client_id=self._client_id(),  # the member id starts with it: see _previous_member
            group_id=self.group,
            partition_assignment_strategy=(self.assignor,),
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(self.session_timeout_ms // 4, 100),
            # Loading a partition reads it whole: big fetches, few round trips.
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        consumer = AIOKafkaConsumer(**options)
        self._consumer = consumer
        try:
            await consumer.start()
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise UnknownTopic(self.topic)
        except KafkaError as exc:
            await self.stop()
            raise KafkaUnavailable(f"cannot join the group of {self.topic!r}: {exc!r}") from exc
        except BaseException:
            await self.stop()
            raise
        self.partitions = len(partitions)
        previous = await self._previous_member()
        coordinator = getattr(consumer, "_coordinator", None)
        if previous is not None and coordinator is not None:
            # Rejoin as the member this address was before a crash: the group then counts the
            # old membership as having rejoined instead of waiting out its session timeout.
            coordinator.member_id = previous
            log.info("owned_table.membership_taken_over", topic=self.topic, member=previous)
        consumer.subscribe([self.topic], listener=_Listener(self))
        self._task = asyncio.create_task(self._run(), name=f"owned:{self.topic}")
        if ready_timeout_s is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_share(), ready_timeout_s)

    async def _previous_member(self) -> str | None:
        """The member id of a membership that advertised this instance's address (a crashed
        earlier run of it, whose session has not expired yet), from DescribeGroups; None if
        there is none or the broker cannot tell (joining as a new member is always correct).

        Why not static membership (``group.instance.id``), which exists for this: Tansu gives
        no member an assignment when it is used (docs/tansu-behaviour.md)."""
        admin = AIOKafkaAdminClient(**client_options(self.settings, self.bootstrap, "owned-admin"))
        try:
            await admin.start()
            groups = await asyncio.wait_for(admin.describe_consumer_groups([self.group]), 5)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.info("owned_table.describe_failed", topic=self.topic, error=repr(exc))
            return None
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        # A member id is "<client id>-<uuid>" (Apache Kafka and Tansu alike), and the client id
        # names the address; Tansu describes no member metadata, so the id is what tells.
        prefix = self._client_id() + "-"
        for response in groups:
            for group in getattr(response, "groups", ()):
                for member in group[5]:  # members: the member id comes first in every version
                    if str(member[0]).startswith(prefix):
                        return str(member[0])
        return None

    def _client_id(self) -> str:
        return f"{self.settings.client_id}-owned-{self.topic}@{self.address}"

    async def _first_share(self) -> None:
        while not (self._stable and self._owned <= self._loaded):
            await self._changed.wait()

    async def stop(self) -> None:
        """Stop reading; the group moves this instance's partitions once its session times out
        (see :data:`LEAVE_GROUP`)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            coordinator = getattr(consumer, "_coordinator", None)
            if not LEAVE_GROUP and coordinator is not None:
                coordinator.generation = -1  # aiokafka sends LeaveGroup only from generation > 0
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, KafkaError, OSError):
                await asyncio.wait_for(consumer.stop(), 10)
        self._stable = False
        self._loaded.clear()
        self._owned.clear()
        self._report()
        self._signal()

    # -- where a key's state is ---------------------------------------------------------------

    def partition_of(self, key: bytes) -> int:
        """Kafka's default partitioner: the partition the producer writes ``key`` to."""
        return _key_hash(key) % self.partitions

    def local(self, partition: int) -> T | None:
        """The table of ``partition`` if this instance owns it and has loaded it."""
        return self._tables.get(partition) if partition in self._loaded else None

    def placement_now(self, partition: int) -> Placement[T] | None:
        """Where ``partition`` is served, or None while ownership is moving (then
        :meth:`placement`, which waits)."""
        if self._stable:
            if partition in self._loaded:
                return Placement(partition, self._tables[partition], None)
            owner = self._owners.get(partition)
            if partition not in self._owned and owner:
                return Placement(partition, None, owner)
        return None

    async def placement(self, partition: int, timeout: float) -> Placement[T]:
        """Where ``partition`` is served, waiting up to ``timeout`` while ownership is moving
        (a rebalance, or this instance still loading it). Raises :class:`NotSettled`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            settled = self.placement_now(partition)
            if settled is not None:
                return settled
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotSettled(f"no owner of partition {partition} of {self.topic} is known")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def owns(self, partition: int) -> bool:
        return partition in self._loaded

    def owned(self) -> dict[int, T]:
        return {p: self._tables[p] for p in sorted(self._loaded)}

    @property
    def owners(self) -> dict[int, str]:
        return dict(self._owners)

    async def write(self, key: bytes, value: bytes | None, timestamp_ms: int) -> Produced:
        """Produce a record to the partition of ``key`` (acks=all). Raises KafkaUnavailable.

        The partition is named, not left to the producer's partitioner: the key's hash is
        cached here already (hashing it again there cost ~8 us a write), and the record goes
        to the partition this instance decided for, whatever the producer's metadata says."""
        message = new_message(self.topic, key, value, (), timestamp_ms=timestamp_ms)
        return await self.producer.send(message, "all", self.partition_of(key))

    def write_soon(
        self,
        key: bytes,
        value: bytes | None,
        timestamp_ms: int,
        on_done: Callable[[asyncio.Future[Any]], None],
    ) -> bool:
        """:meth:`write` for a caller that does not wait: no coroutine, no task, no timer;
        ``on_done(future)`` runs when Kafka acknowledged or refused the record (the
        producer's batcher fails it after ``request_timeout_ms``). False if the record could not be handed
        over without waiting (the producer or the topic's metadata not ready): then ``write``.
        Raises KafkaUnavailable as ``write`` does."""
        message = new_message(self.topic, key, value, (), timestamp_ms=timestamp_ms)
        future = self.producer.submit_now(message, "all", on_done, self.partition_of(key))
        return future is not None

    # -- the group's callbacks and the read loop ------------------------------------------------

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _revoked(self, partitions: set[int]) -> None:
        self._stable = False
        self._loaded -= partitions
        self._owned -= partitions
        self._report()
        self._signal()
        if self.on_revoke is not None and partitions:
            try:
                await asyncio.wait_for(self.on_revoke(partitions), self.revoke_timeout_s)
            except TimeoutError:
                log.warning("owned.revoke_timeout", topic=self.topic, partitions=sorted(partitions))
            except Exception:
                log.exception("owned.revoke_failed", topic=self.topic)

    async def _assigned(self, partitions: set[int]) -> None:
        consumer = self._consumer
        if consumer is None:
            # stop() already let go of the consumer while the group coordinator was finishing
            # a join: this instance is leaving, so the assignment is not ours to take.
            log.info(
                "owned.assigned_while_stopping", topic=self.topic, partitions=sorted(partitions)
            )
            return
        self.generation += 1
        for gone in set(self._tables) - partitions:  # another instance holds these now
            del self._tables[gone]
            self._position.pop(gone, None)
        fresh = [TopicPartition(self.topic, p) for p in sorted(partitions - set(self._tables))]
        starts = await consumer.beginning_offsets(fresh) if fresh else {}
        for tp in fresh:
            self._tables[tp.partition] = self.new_table(tp.partition)
            self._position[tp.partition] = starts[tp]
        for partition in partitions:
            tp = TopicPartition(self.topic, partition)
            consumer.seek(tp, self._position[partition])
        if self.sole_writer:  # read each (again) up to its end; paused once loaded
            consumer.resume(*(TopicPartition(self.topic, p) for p in partitions))
        self._owned = set(partitions)
        self._loaded = set()
        self._owners = dict(self.assignor.owners)
        self._stable = True
        log.info(
            "owned.assigned",
            topic=self.topic,
            address=self.address,
            generation=self.generation,
            partitions=sorted(partitions),
            reloading=[tp.partition for tp in fresh],
        )
        self._signal()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
            except KafkaError as exc:
                log.warning("owned.fetch_failed", topic=self.topic, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                table = self._tables.get(tp.partition)
                if table is None or not records:
                    continue
                apply = table.apply
                for record in records:
                    apply(record.key, record.value, record.timestamp)
                self._position[tp.partition] = records[-1].offset + 1
                self.records_read += len(records)
            self._check_loaded(consumer)
            if time.monotonic() - self._reported > REPORT_S:
                self._report()

    def _check_loaded(self, consumer: AIOKafkaConsumer) -> None:
        if not self._stable:
            return
        done = []
        for partition in self._owned - self._loaded:
            highwater = consumer.highwater(TopicPartition(self.topic, partition))
            if highwater is not None and self._position[partition] >= highwater:
                done.append(partition)
        if not done:
            return
        if self.sole_writer:
            consumer.pause(*(TopicPartition(self.topic, p) for p in done))
        for partition in sorted(done):
            self._loaded.add(partition)
            if self.on_loaded is not None:
                self.on_loaded(partition, self._tables[partition])
        self._report()
        log.info(
            "owned.loaded",
            topic=self.topic,
            partitions=sorted(done),
            records_read=self.records_read,
        )
        self._signal()
