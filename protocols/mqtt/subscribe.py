"""A connection's SUBSCRIBE, UNSUBSCRIBE and resumed subscriptions: filters checked against the
routes (:func:`~protocols.mqtt.subscriptions.subscription_for`), hub feeds made ready, the
SUBACK, then retained messages and live records, with no ``await`` between the last two so
nothing slips through or doubles.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from bridge.edge.governance import FilterError, read_decision, subscriber_filter
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.record_filter import RecordFilter
from bridge.telemetry import metrics

from .host import ClientHost
from .session_state import SessionState
from .subscriptions import Receiver, Subscription, subscription_for
from .wire.connection import Connection
from .wire.packets import ReasonCode, Subscribe, Unsubscribe

log = structlog.get_logger(__name__)
PROTOCOL = "mqtt"

# SUBACK reason -> the rejection reason counted (docs/operations.md)
_SUBSCRIBE_REFUSALS: dict[int, str] = {
    ReasonCode.NOT_AUTHORIZED: "forbidden",
    ReasonCode.TOPIC_FILTER_INVALID: "no_route",  # also a malformed filter: both mean "no route"
    ReasonCode.PROTOCOL_ERROR: "malformed",
    ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR: "bad_filter",
}


class Subscriber(Receiver, Protocol):
    """The connection subscribing (:class:`protocols.mqtt.client.Client`)."""

    client_id: str
    conn: Connection
    host: ClientHost[Any]
    subscriptions: dict[str, Subscription]  # by filter as subscribed
    session_dirty: bool

    def flush(self) -> None: ...


def _subscription(
    client: Subscriber,
    full_filter: str,
    qos: int,
    no_local: bool,
    rap: bool,
    rh: int,
    identifier: int | None,
) -> tuple[Subscription | None, int]:
    host = client.host
    return subscription_for(
        client, host.delivery, host.routes, full_filter, qos, no_local, rap, rh, identifier
    )


def govern(
    client: Subscriber, subscription: Subscription, values: dict[str, str]
) -> tuple[int, str] | None:
    """Jurisdiction and filters of a new subscription (issue 16): narrows its routes to those
    the caller's region may read and sets the hub filter per Kafka topic; or the SUBACK refusal
    (0x87 not authorized for jurisdiction, 0x83 for a bad filter) with its reason string.

    Filters are MQTT 5 user properties on SUBSCRIBE, one per declared filter parameter
    (``market`` = ``1x2``); they apply to every topic filter of that SUBSCRIBE. MQTT 3.1.1
    cannot carry them (its subscriptions are never filtered), and gets 0x80 for a refusal.
    """
    config = client.host.ingest.config
    by_name = client.host.routes.by_name
    routes = [by_name[name] for name in sorted(subscription.routes)]
    allowed = []
    refusals = []
    filters: dict[str, set[RecordFilter | None]] = {}
    for route in routes:
        decision = read_decision(route, client.principal, config, PROTOCOL) if config else None
        if decision is not None and not decision.allowed:
            refusals.append(f"route {route.name}: {decision.reason}")
            continue
        try:
            record_filter = subscriber_filter(route, values, decision)
        except FilterError as exc:
            return ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR, str(exc)
        allowed.append(route)
        filters.setdefault(route.topic, set()).add(record_filter)
    if not allowed:
        return ReasonCode.NOT_AUTHORIZED, "; ".join(refusals)
    if subscription.group is not None and any(f is not None for fs in filters.values() for f in fs):
        # A shared group is fed by one hub subscription for all its members, whose filters and
        # regions may differ: refused rather than delivering records a member did not ask for
        # (or may not see).
        return (
            ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR,
            "a shared subscription cannot be filtered (filter properties, or a route whose "
            "records stay in their region)",
        )
    for topic, found in filters.items():
        if len(found) > 1:
            return (
                ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR,
                f"this filter spans routes of Kafka topic {topic} that filter differently; "
                "subscribe to one route's topics",
            )
        (only,) = found
        if only is not None:
            subscription.record_filters[topic] = only
            subscription.filter_values = dict(values)  # kept with a persistent session
    if refusals:
        log.info("mqtt.subscribe_narrowed", client_id=client.client_id, refused=refusals)
        subscription.routes = frozenset(r.name for r in allowed)
    return None


async def subscribe(client: Subscriber, packet: Subscribe) -> None:
    host = client.host
    identifiers = packet.properties.subscription_identifiers
    identifier = identifiers[0] if identifiers else None
    codes: list[int] = []
    reasons: list[str] = []
    new: list[tuple[Subscription, bool]] = []
    filter_values = dict(packet.properties.user_properties)
    for option in packet.subscriptions:
        subscription, code = _subscription(
            client,
            option.topic_filter,
            option.qos,
            option.no_local,
            option.retain_as_published,
            option.retain_handling,
            identifier,
        )
        if subscription is not None:
            refusal = govern(client, subscription, filter_values)
            if refusal is not None:
                subscription, (code, reason) = None, refusal
                reasons.append(reason)
        if subscription is None:
            metrics.rejected(PROTOCOL, _SUBSCRIBE_REFUSALS.get(code, "subscribe_refused"))
            log.warning(
                "mqtt.subscribe_refused",
                client_id=client.client_id,
                filter=option.topic_filter,
                reason_code=f"0x{code:02X}",
            )
            codes.append(code)
            continue
        try:
            await host.prepare_feeds(subscription)
        except (UnknownTopic, KafkaUnavailable) as exc:
            log.warning("mqtt.subscribe_failed", client_id=client.client_id, error=str(exc))
            codes.append(ReasonCode.UNSPECIFIED_ERROR)
            continue
        previous = client.subscriptions.pop(option.topic_filter, None)
        if previous is not None:
            host.detach(previous)
        client.subscriptions[option.topic_filter] = subscription
        codes.append(subscription.qos)
        new.append((subscription, previous is None))
    replays = [
        subscription
        for subscription, is_new in new
        if subscription.group is None
        and (subscription.retain_handling == 0 or (subscription.retain_handling == 1 and is_new))
    ]
    if replays:  # retained publishes this instance took before: in the table first
        try:
            await host.retained.settled()
        except TimeoutError:
            log.warning("mqtt.retained_not_read_back", client_id=client.client_id)
    client.conn.suback(packet.packet_id, codes, "; ".join(reasons))
    client.flush()
    for subscription, _ in new:
        if subscription in replays:
            host.retained.replay(subscription)
        await host.attach(subscription, resume=False)
    if new and client.persistent:
        client.session_dirty = True


def unsubscribe(client: Subscriber, packet: Unsubscribe) -> None:
    codes: list[int] = []
    for topic_filter in packet.topic_filters:
        subscription = client.subscriptions.pop(topic_filter, None)
        if subscription is None:
            codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
            continue
        client.host.detach(subscription)
        codes.append(0)
    client.conn.unsuback(packet.packet_id, codes)
    if client.persistent:
        client.session_dirty = True


async def resume(client: Subscriber, stored: SessionState) -> None:
    """Re-establish a stored session: PUBRELs, then subscriptions from their positions."""
    conn = client.conn
    conn.restore_pubrel(stored.pubrel_out)
    conn.awaiting_pubrel.update(stored.pubrel_in)
    for sub in stored.subscriptions.values():
        for by_partition in sub.inflight.values():
            for ids in by_partition.values():
                conn.reserved_ids.update(ids.values())
    client.flush()
    for sub in stored.subscriptions.values():
        subscription, code = _subscription(
            client,
            sub.topic_filter,
            sub.qos,
            sub.no_local,
            sub.retain_as_published,
            sub.retain_handling,
            sub.identifier,
        )
        if subscription is not None:
            # Jurisdiction is checked again (the caller's region may have changed), and the
            # filter comes back from the values the original SUBSCRIBE gave.
            refusal = govern(client, subscription, sub.filter_values)
            if refusal is not None:
                subscription, code = None, refusal[0]
        if subscription is None:
            log.warning(
                "mqtt.resume_dropped_subscription",
                client_id=client.client_id,
                filter=sub.topic_filter,
                code=code,
            )
            continue
        subscription.trackers = Subscription.restore_trackers(sub)
        client.subscriptions[sub.topic_filter] = subscription
        await client.host.attach(subscription, resume=True)
