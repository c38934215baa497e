"""Subscriptions: MQTT filters fed by the hub, with positions that never run ahead of the client.

A :class:`Subscription` is one topic filter of one client. It subscribes to the hub for every
Kafka topic of the routes the filter intersects and picks out the records whose MQTT topic
matches. Per Kafka topic a :class:`Tracker` keeps where the client is:

* ``read``: the hub position after the last record handed over (matching or not);
* ``unacked``: offsets delivered with QoS 1/2 that the client has not acknowledged yet.

The position saved in the session is, per partition, the lowest unacknowledged offset, else
``read``. So a client that reconnects (anywhere) is re-sent exactly what it had not acknowledged
and everything after; offsets it acknowledged beyond that low-water mark are saved too and
skipped on replay, so nothing acknowledged is sent twice.

A :class:`SharedGroup` is ``$share/{group}/{filter}`` on this instance: one set of hub
subscriptions, each record handed to the next member (round robin) that can take it. Across
instances, every instance with members of a group takes the Kafka partitions
``p % instances == its index`` (membership from the sessions table), so each record goes to one
member of the group in the whole cluster while membership is stable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bridge.edge.access import Principal, authorize
from bridge.kafka.hub import Subscription as HubSubscription
from bridge.kafka.resets import DELETED
from bridge.model.config import Route
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.record_filter import RecordFilter
from bridge.model.routing import RouteTable
from bridge.model.topic_filter import TopicError, is_wildcard, split_shared, validate_filter

from .session_state import StoredSubscription
from .wire.packets import ReasonCode

log = structlog.get_logger(__name__)
# The MQTT 5 user property on the first delivery after a reset (docs/mqtt.md)
RESET_PROPERTY = "edgebridge-reset"


class Receiver(Protocol):
    """The connection a subscription delivers to (:class:`protocols.mqtt.client.Client`)."""

    client_id_bytes: bytes
    principal: Principal
    persistent: bool
    expiry: int | None
    closed: bool

    @property
    def receiving(self) -> bool:
        """Can records be handed over now (connected, not closing)?"""
        ...

    def send_record(
        self,
        subscription: Subscription,
        tracker: Tracker,
        record: Message,
        route: Route,
        topic: str,
        packet_id: int | None,
        track: bool = True,
        retain: bool = False,
    ) -> None:
        """Hand one record to the client (synchronous: called from the hub's dispatch)."""
        ...

    def mark_sent(self, record: Message) -> None:
        """``record`` is not to be sent through another subscription either."""
        ...

    def forget_sent(self, topic: str) -> None:
        """``topic`` starts again: offsets remembered as sent are of what came before."""
        ...

    def release_packet_ids(self, packet_ids: Iterable[int]) -> None:
        """Packet ids kept for redeliveries that will not come (not in flight now)."""
        ...

    def topic_gone(self, subscription: Subscription, topic: str) -> None:
        """``topic`` was deleted: deliver it again once it exists again."""
        ...


class RecordRouter(Protocol):
    """What every subscription of the front-end asks about a record (cached per record being
    fanned out: :class:`protocols.mqtt.delivery.Delivery`)."""

    def matches(self, topic_filter: str, topic: str) -> bool: ...

    def resolve(self, record: Message) -> tuple[Route, str] | None:
        """The route and MQTT topic of a Kafka record (None: no MQTT route)."""
        ...


def identity_owner(route: Route, topic_filter: str) -> str | None:
    """The identity a filter pins on ``route``'s identity level, or None if it leaves it open.

    Route access ``identity = "user"`` binds ``{user}`` to the caller. A filter with a literal
    at that level (``users/bob/#``) can only match that user's topics, so it is refused for
    anyone else at SUBSCRIBE time instead of being granted and silently delivering nothing;
    ``+`` or ``#`` over that level is granted and filtered per record (:meth:`accepts`).
    """
    name = route.access.identity
    if name is None or route.mqtt is None:
        return None
    levels = topic_filter.split("/")
    for index, level in enumerate(route.mqtt.template.levels):
        if index >= len(levels) or levels[index] == "#":
            return None
        if level.text != name or level.kind == "literal":
            continue
        value = levels[index:] if level.kind == "rest" else [levels[index]]
        if any(part in ("+", "#") for part in value):
            return None
        return "/".join(value)
    return None


@dataclass(slots=True)
class Tracker:
    read: dict[int, int] = field(default_factory=dict)
    epoch: int = 0  # the incarnation of the Kafka topic ``read`` is in (0: unknown)
    # why the next delivery does not continue what came before (RESET / TRUNCATED), told to an
    # MQTT 5 client in the user property RESET_PROPERTY of that delivery
    reset_reason: str | None = None
    unacked: dict[int, dict[int, None]] = field(default_factory=dict)
    acked_ahead: dict[int, set[int]] = field(default_factory=dict)
    skip: dict[int, set[int]] = field(default_factory=dict)  # acked before a reconnect
    resend: dict[int, dict[int, int]] = field(default_factory=dict)  # offset -> packet id

    def advance(self, position: Position) -> None:
        read = self.read
        for partition, offset in position.items():
            if offset > read.get(partition, -1):
                read[partition] = offset

    def sent(self, partition: int, offset: int) -> None:
        self.unacked.setdefault(partition, {})[offset] = None

    def acked(self, partition: int, offset: int) -> None:
        pending = self.unacked.get(partition)
        if pending is None or offset not in pending:
            return
        lowest = next(iter(pending))
        del pending[offset]
        if offset != lowest:
            self.acked_ahead.setdefault(partition, set()).add(offset)
        else:
            low = next(iter(pending), None)
            ahead = self.acked_ahead.get(partition)
            if ahead:
                ahead.difference_update([o for o in ahead if low is None or o < low])

    def saved(self) -> dict[int, int]:
        saved = dict(self.read)
        for partition, pending in self.unacked.items():
            if pending:
                saved[partition] = min(saved.get(partition, 0), next(iter(pending)))
        return saved

    def saved_acked(self) -> dict[int, list[int]]:
        saved = self.saved()
        out: dict[int, list[int]] = {}
        for partition, offsets in self.acked_ahead.items():
            kept = sorted(o for o in offsets if o >= saved.get(partition, 0))
            if kept:
                out[partition] = kept
        for partition, offsets in self.skip.items():  # not replayed yet: still acknowledged
            kept = sorted(o for o in offsets if o >= saved.get(partition, 0))
            if kept:
                out.setdefault(partition, []).extend(kept)
        return out


@dataclass(eq=False, slots=True)
class Subscription:
    """One topic filter of one client (a hub :class:`~bridge.hub.Subscriber`)."""

    client: Receiver
    router: RecordRouter
    topic_filter: str  # without ``$share/{group}/``
    full_filter: str
    qos: int
    routes: frozenset[str]  # route names allowed for this subscriber
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None
    group: str | None = None
    trackers: dict[str, Tracker] = field(default_factory=dict)
    hub_subscriptions: list[HubSubscription] = field(default_factory=list)
    identity_routes: frozenset[str] = frozenset()  # routes needing a per-topic identity check
    identifiers: tuple[int, ...] = field(init=False)  # ``identifier`` as a PUBLISH carries it

    def __post_init__(self) -> None:
        self.identifiers = () if self.identifier is None else (self.identifier,)

    # Kafka topic -> the canonical filter the hub applies for this subscription (MQTT 5 user
    # properties on SUBSCRIBE naming a route's [[routes.filters]], and jurisdiction).
    record_filters: dict[str, RecordFilter] = field(default_factory=dict)
    filter_values: dict[str, str] = field(default_factory=dict)  # as the client sent them

    def accepts(self, route: Route, topic: str, record: Message) -> bool:
        if route.name not in self.routes or not self.router.matches(self.topic_filter, topic):
            return False
        if self.no_local and record.header("mqtt-client") == self.client.client_id_bytes:
            return False
        if route.name in self.identity_routes and route.mqtt is not None:
            params = route.mqtt.template.match(topic) or {}
            if authorize(route, "subscribe", self.client.principal, params) is not None:
                return False
        return True

    def deliver(self, record: Message, position: Position) -> None:
        if not self.client.receiving:
            # Closing: the hub may still dispatch until the subscription is detached. The
            # position must not move past a record the client never got, or the session saved
            # on the way out would skip it on resume.
            return
        tracker = self.trackers.get(record.topic)
        if tracker is None:
            tracker = self.trackers[record.topic] = Tracker()
        partition, offset = record.partition, record.offset
        assert partition is not None and offset is not None
        tracker.advance(position)
        skip = tracker.skip.get(partition)
        if skip and offset in skip:
            skip.discard(offset)
            self.client.mark_sent(record)
            return
        resolved = self.router.resolve(record)
        if resolved is None:
            return
        route, topic = resolved
        if not self.accepts(route, topic, record):
            return
        packet_id = None
        resend = tracker.resend.get(partition)
        if resend:
            packet_id = resend.pop(offset, None)
        self.client.send_record(self, tracker, record, route, topic, packet_id)

    def for_topic(self, topic: str) -> TopicSubscriber:
        """This subscription as the hub subscriber of one of its Kafka topics."""
        return TopicSubscriber(self, topic)

    def reset(self, topic: str, reason: str, position: Position | None) -> None:
        """The hub starts ``topic`` again (:class:`bridge.kafka.hub.ResettableSubscriber`): the
        old offsets mean nothing now, and the client hears it on the next delivery."""
        old = self.trackers.get(topic)
        log.warning(
            "mqtt.subscription_reset",
            client_id=self.client.client_id_bytes.decode("utf-8", "replace"),
            filter=self.full_filter,
            topic=topic,
            reason=reason,
            old_position=None if old is None else old.read,
            position=None if position is None else position.to_dict(),
        )
        self.client.forget_sent(topic)
        if reason == DELETED or position is None:
            # Nothing more comes from this feed. The connection stays; the subscription joins
            # the topic again, from its start, once it exists again. The saved position stays
            # as it was, so a session resuming by then is told it was reset (a new epoch).
            self.client.topic_gone(self, topic)
            return
        self.restart(
            topic, Tracker(read=position.to_dict(), epoch=position.epoch, reset_reason=reason)
        )

    def restart(self, topic: str, tracker: Tracker) -> None:
        """``topic`` goes on from ``tracker`` after a reset. The redeliveries the old one still
        owed (records in flight when the session was saved) will not come with their packet
        ids: those offsets are of another incarnation, or past; their ids are freed."""
        old = self.trackers.get(topic)
        if old is not None and old.resend:
            self.client.release_packet_ids(
                pid for by_offset in old.resend.values() for pid in by_offset.values()
            )
        self.trackers[topic] = tracker

    def close(self) -> None:
        for hub_subscription in self.hub_subscriptions:
            hub_subscription.close()
        self.hub_subscriptions.clear()

    def stored(self, inflight: dict[tuple[str, int, int], int]) -> StoredSubscription:
        """This subscription as session state; ``inflight``: (topic, partition, offset) -> id."""
        stored = StoredSubscription(
            self.full_filter,
            self.qos,
            self.no_local,
            self.retain_as_published,
            self.retain_handling,
            self.identifier,
            filter_values=dict(self.filter_values),
        )
        if self.group is not None:
            return stored  # shared subscriptions resume live: the group owns the progress
        for topic, tracker in self.trackers.items():
            stored.positions[topic] = tracker.saved()
            if tracker.epoch:
                stored.epochs[topic] = tracker.epoch
            acked = tracker.saved_acked()
            if acked:
                stored.acked[topic] = acked
        for (topic, partition, offset), packet_id in inflight.items():
            stored.inflight.setdefault(topic, {}).setdefault(partition, {})[offset] = packet_id
        return stored

    @classmethod
    def restore_trackers(cls, stored: StoredSubscription) -> dict[str, Tracker]:
        trackers: dict[str, Tracker] = {}
        for topic, positions in stored.positions.items():
            tracker = Tracker(read=dict(positions), epoch=stored.epochs.get(topic, 0))
            tracker.skip = {p: set(o) for p, o in stored.acked.get(topic, {}).items()}
            tracker.resend = {p: dict(m) for p, m in stored.inflight.get(topic, {}).items()}
            trackers[topic] = tracker
        return trackers


class TopicResettable(Protocol):
    """A hub subscriber of several Kafka topics that wants to know which one was reset."""

    def deliver(self, record: Message, position: Position) -> None: ...

    def reset(self, topic: str, reason: str, position: Position | None) -> None: ...


class TopicSubscriber:
    """A :class:`Subscription` or :class:`SharedGroup` as the hub subscriber of one Kafka
    topic: ``deliver`` is the owner's own bound method (no extra call per record), ``reset``
    knows the topic."""

    __slots__ = ("deliver", "owner", "topic")

    def __init__(self, owner: TopicResettable, topic: str) -> None:
        self.owner = owner
        self.topic = topic
        self.deliver = owner.deliver

    def reset(self, reason: str, position: Position | None) -> None:
        self.owner.reset(self.topic, reason, position)


def subscription_for(
    client: Receiver,
    router: RecordRouter,
    routes: RouteTable,
    full_filter: str,
    qos: int,
    no_local: bool = False,
    rap: bool = False,
    rh: int = 0,
    identifier: int | None = None,
) -> tuple[Subscription | None, int]:
    """The subscription of ``client`` to ``full_filter`` (``$share/{group}/`` included) and its
    granted QoS; or None and the SUBACK reason code that refuses it."""
    try:
        group, topic_filter = split_shared(full_filter)
        validate_filter(topic_filter)
    except TopicError:
        return None, ReasonCode.TOPIC_FILTER_INVALID
    if group is not None and no_local:
        return None, ReasonCode.PROTOCOL_ERROR
    if not is_wildcard(topic_filter):
        # A literal topic is decided by the route a publish to it takes (the most specific):
        # a catch-all route that would grant it must not override a specific one that refuses
        # the caller (its records are that route's alone: see ``Subscription.accepts``).
        match = routes.mqtt.match(topic_filter)
        if match is None:
            return None, ReasonCode.TOPIC_FILTER_INVALID
        if authorize(match.target, "subscribe", client.principal, match.params) is not None:
            return None, ReasonCode.NOT_AUTHORIZED
        allowed = [match.target]
    else:
        # A wildcard filter may span routes: granted if any route it intersects allows the
        # caller, and fed only from those; each record still belongs to the route its own
        # topic takes, so a refusing specific route's records never arrive through a
        # catch-all (docs/mqtt.md, "Overlapping routes").
        intersecting = routes.mqtt.intersecting(topic_filter)
        if not intersecting:
            return None, ReasonCode.TOPIC_FILTER_INVALID
        allowed = [r for r in intersecting if _may_subscribe(client.principal, r, topic_filter)]
        if not allowed:
            return None, ReasonCode.NOT_AUTHORIZED
    granted = min(qos, *(int(r.mqtt.option("max_qos", 2)) for r in allowed if r.mqtt))
    subscription = Subscription(
        client=client,
        router=router,
        topic_filter=topic_filter,
        full_filter=full_filter,
        qos=granted,
        routes=frozenset(r.name for r in allowed),
        no_local=no_local,
        retain_as_published=rap,
        retain_handling=rh,
        identifier=identifier,
        group=group,
        identity_routes=frozenset(r.name for r in allowed if r.access.identity is not None),
    )
    return subscription, granted


def _may_subscribe(principal: Principal, route: Route, topic_filter: str) -> bool:
    """Roles, and for an identity-bound route the identity the filter names (if any)."""
    owner = identity_owner(route, topic_filter)
    params = {} if owner is None else {route.access.identity or "": owner}
    return authorize(route, "subscribe", principal, params) is None


@dataclass(eq=False, slots=True)
class SharedGroup:
    """``$share/{group}/{filter}`` on this instance: round robin over its members."""

    name: str
    topic_filter: str
    members: list[Subscription] = field(default_factory=list)
    hub_subscriptions: list[HubSubscription] = field(default_factory=list)
    resolve: Callable[[Message], tuple[Route, str] | None] | None = None
    # which partitions this instance serves (None: all); set from cluster membership
    mine: Callable[[int], bool] | None = None
    _next: int = 0
    # The group's progress on the partitions this instance served: (Kafka topic, partition) ->
    # the next offset; saved in the sessions table (see shared.py) so that a group whose
    # members were all away resumes where it stopped.
    progress: dict[tuple[str, int], int] = field(default_factory=dict)
    unsaved: set[tuple[str, int]] = field(default_factory=set)
    epochs: dict[str, int] = field(default_factory=dict)  # Kafka topic -> epoch of progress
    resets: dict[str, str] = field(default_factory=dict)  # Kafka topic -> reason to tell next
    # the longest session expiry among persistent members (None: never expires); 0: none yet
    persistent_expiry: float | None = 0.0

    def deliver(self, record: Message, position: Position) -> None:
        if not self.members or self.resolve is None:
            return
        assert record.partition is not None and record.offset is not None
        if self.mine is not None and not self.mine(record.partition):
            return
        resolved = self.resolve(record)
        if resolved is not None and not self._hand_over(record, *resolved):
            return  # no member can take it now (all closing): not past it
        at = (record.topic, record.partition)
        self.progress[at] = record.offset + 1
        self.epochs[record.topic] = position.epoch
        self.unsaved.add(at)

    def reset(self, topic: str, reason: str, position: Position | None) -> None:
        """The hub starts ``topic`` again: the next member to get one of its records is told
        (the user property, as for plain subscriptions); progress follows the new start."""
        log.warning(
            "mqtt.group_reset",
            group=self.name,
            filter=self.topic_filter,
            topic=topic,
            reason=reason,
        )
        if reason == DELETED or position is None:
            return
        self.resets[topic] = reason
        self.epochs[topic] = position.epoch
        for partition, offset in position.items():
            self.progress[(topic, partition)] = offset
            self.unsaved.add((topic, partition))

    def _hand_over(self, record: Message, route: Route, topic: str) -> bool:
        count = len(self.members)
        receiving = False
        for step in range(count):
            member = self.members[(self._next + step) % count]
            if not member.client.receiving:
                continue
            receiving = True
            if member.accepts(route, topic, record):
                self._next = (self._next + step + 1) % count
                tracker = member.trackers.setdefault(record.topic, Tracker())
                if self.resets:
                    tracker.reset_reason = self.resets.pop(record.topic, None)
                member.client.send_record(member, tracker, record, route, topic, None, track=False)
                return True
        return receiving  # taken by nobody's filter (No Local...): past it all the same

    def joined(self, persistent: bool, expiry: float | None) -> None:
        """A member joined; a persistent one keeps the group's progress for its expiry."""
        if not persistent:
            return
        if expiry is None or self.persistent_expiry is None:
            self.persistent_expiry = None
        else:
            self.persistent_expiry = max(self.persistent_expiry, expiry)

    def close(self) -> None:
        for hub_subscription in self.hub_subscriptions:
            hub_subscription.close()
        self.hub_subscriptions.clear()


Token = Any
