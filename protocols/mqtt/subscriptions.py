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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.edge.access import Principal, authorize
from bridge.kafka.hub import Subscription as HubSubscription
from bridge.model.config import Route
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.record_filter import RecordFilter
from bridge.model.routing import RouteTable
from bridge.model.topic_filter import TopicError, split_shared, validate_filter

from .session_state import StoredSubscription
from .wire.packets import ReasonCode


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
            tracker = Tracker(read=dict(positions))
            tracker.skip = {p: set(o) for p, o in stored.acked.get(topic, {}).items()}
            tracker.resend = {p: dict(m) for p, m in stored.inflight.get(topic, {}).items()}
            trackers[topic] = tracker
        return trackers


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
        self.unsaved.add(at)

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
