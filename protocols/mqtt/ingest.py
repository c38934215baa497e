"""From an MQTT PUBLISH to Kafka: the one path of a client's publishes and of wills.

A :class:`Sender` (one per connection) checks a PUBLISH (topic name, route, access, QoS, retain,
schema) and turns it into :class:`Records`: the record of its route and, for a retained publish,
the record of the retained-messages table. :class:`Ingest` (one per front-end) hands them to the
producer: a retained publish's two records are both submitted before either is awaited, and the
future it returns is done when Kafka acknowledged both. Nothing here waits for the bridge's own
read-back of the retained table: a SUBSCRIBE that needs it waits for it
(:meth:`RetainedMessages.settled <protocols.mqtt.retained.RetainedMessages.settled>`).

Publishers repeat their topics, so a sender keeps, per topic, the :class:`~bridge.records.
RecordPlan` the first publish made (route, key, the route's and audit headers) with the route's
checks: later publishes of the topic only check QoS, retain and schema and fill in their MQTT
headers. The plan comes from :func:`bridge.edge.record_builder.plan_record`, which ``build_message`` itself
uses, so the records cannot differ from what ``build_message`` makes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from bridge.edge.access import Principal, authorize
from bridge.edge.governance import publish_decision, region_of, tag_headers
from bridge.edge.record_builder import RecordPlan, UnroutableMessage, plan_record, resolver
from bridge.edge.transform import (
    NOBODY,
    Caller,
    TransformFailed,
    admit,
    inbound_caller,
    wants_caller,
)
from bridge.edge.validation import InvalidPayload, validate_payload
from bridge.model.config import Config, Route
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message, Origin
from bridge.model.routing import Match, RouteTable
from bridge.model.topic_filter import TopicError, validate_topic_name
from bridge.telemetry import metrics

from . import records
from .options import MqttOptions
from .ports import OnDone, Produce
from .wire.packets import Publish, ReasonCode

PROTOCOL = "mqtt"
PLANS = 64  # topics whose publish plan a connection remembers (all forgotten when full)
ROUTE_CACHE = 65_536
RETAINED_ACKS = "all"  # the retained table is state: as the table store writes it
_MISSING = object()

#: ``reject(route, payload, origin, error, address)``: count, log and dead-letter a payload
#: refused at the edge (bridge.dead_letter.reject_payload with the producer bound).
RejectPayload = Callable[[Route, bytes, Origin, Exception, str], Awaitable[Any]]


class PublishRefused(Exception):
    """A PUBLISH refused at the edge; ``metric`` is the rejection reason counted for it, and
    ``payload_error`` the payload problem to dead-letter (schema, unroutable), if that is why."""

    def __init__(
        self,
        code: int,
        reason: str,
        metric: str,
        payload_error: Exception | None = None,
        route: Route | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.metric = metric
        self.payload_error = payload_error
        self.route = route


class Records:
    """What one PUBLISH becomes. (A plain slotted class: one is made per publish, and a frozen
    dataclass's ``__init__`` costs twice as much.)"""

    __slots__ = ("message", "retained", "route")

    def __init__(self, route: Route, message: Message, retained: Message | None) -> None:
        self.route = route
        self.message = message  # for the route's Kafka topic
        self.retained = retained  # for the retained-messages table (None: not retained)


class RetainedSink(Protocol):
    """The retained-messages table as the ingest writes it."""

    topic: str

    def written(self, produced: asyncio.Future[Any]) -> None:
        """A record was submitted to the table; ``produced`` is Kafka's acknowledgement."""
        ...


class InboundCounter:
    """Messages in (and their bytes) of one route: summed per publish, added to the metrics once
    per loop turn, because taking the metrics' locks for each of thousands of publishes a second
    is measurable (as for deliveries). Flushed before the turn's PUBACKs are written."""

    __slots__ = ("_bytes", "_count", "_metric_bytes", "_metric_messages", "_scheduled")

    def __init__(self, route: str) -> None:
        self._metric_messages = metrics.MESSAGES_IN.labels(route, PROTOCOL)
        self._metric_bytes = metrics.BYTES_IN.labels(route, PROTOCOL)
        self._count = self._bytes = 0
        self._scheduled = False

    def add(self, size: int) -> None:
        self._count += 1
        self._bytes += size
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._count:
            self._metric_messages.inc(self._count)
            self._metric_bytes.inc(self._bytes)
            self._count = self._bytes = 0


class Ingest:
    """The publish path every connection and every will of one front-end shares."""

    def __init__(
        self,
        routes: RouteTable,
        producer: Produce,
        retained: RetainedSink,
        options: MqttOptions,
        reject: RejectPayload | None = None,
    ) -> None:
        self.routes = routes
        self.producer = producer
        self.retained = retained
        self.options = options
        self.reject = reject
        self.planned = 0  # records made from a kept plan (tests check the fast path is taken)
        self.config: Config | None = (
            None  # for jurisdiction (the instance's region); set by the front-end
        )
        self._routes_of: dict[str, object] = {}
        self._inbound: dict[str, InboundCounter] = {}

    def sender(self, client_id: str, principal: Principal, remote: str | None) -> Sender:
        """The publishing side of one connection (or of one will)."""
        return Sender(
            self, client_id, principal, Origin(PROTOCOL, client_id, principal.identity, remote)
        )

    def route_of(self, topic: str) -> Match[Route] | None:
        """The route (and parameters) of an MQTT topic; publishers repeat topics, so cached."""
        cached = self._routes_of.get(topic, _MISSING)
        if cached is _MISSING:
            cached = self.routes.mqtt.match(topic)
            if len(self._routes_of) >= ROUTE_CACHE:
                self._routes_of.clear()
            self._routes_of[topic] = cached
        return cached  # type: ignore[return-value]

    def acks(self, route: Route, qos: int) -> tuple[str | None, int]:
        """Kafka acks and linger of a publish: QoS 0 may linger for a fuller batch (nobody
        waits for it); QoS 1/2 never do."""
        if qos == 0:
            return self.options.qos0_acks, self.options.qos0_linger_ms
        return route.acks or None, 0

    # -- producing -----------------------------------------------------------------------------

    def counted(self, route: Route, size: int, then: OnDone | None) -> OnDone:
        """The done-callback of a publish: counted as a message in once Kafka acknowledged it,
        then ``then`` (one callback per record: each is one more event-loop handle)."""
        inbound = self._inbound.get(route.name)
        if inbound is None:
            inbound = self._inbound[route.name] = InboundCounter(route.name)
        return partial(_count_in, inbound, size, then)

    def submit_now(
        self, records: Records, acks: str | None, linger_ms: int, on_done: OnDone | None
    ) -> asyncio.Future[Any] | None:
        """:meth:`submit` without a coroutine when nothing needs waiting for (a plain publish,
        no linger, the producer ready): the hot path. None: ``await submit(...)``."""
        if linger_ms or records.retained is not None:
            return None
        return self.producer.submit_now(records.message, acks, on_done)

    async def submit(
        self,
        message: Message,
        retained: Message | None,
        acks: str | None,
        linger_ms: int = 0,
        on_done: OnDone | None = None,
    ) -> asyncio.Future[Any]:
        """Hand a publish's records to the producer (``retained``: its retained-table record);
        the future of Kafka's acknowledgement of all of them (``on_done`` runs when it is done).
        The two records of a retained publish are both submitted before anything is awaited,
        so neither waits for the other. Raises :class:`KafkaUnavailable` if a record cannot
        even be queued."""
        producer = self.producer
        if retained is None:
            ready = None if linger_ms else producer.submit_now(message, acks, on_done)
            return ready or await producer.submit(message, acks, linger_ms, on_done)
        produced = producer.submit_now(message, acks) or await producer.submit(message, acks)
        stored = producer.submit_now(retained, RETAINED_ACKS) or await producer.submit(
            retained, RETAINED_ACKS
        )
        self.retained.written(stored)
        both = _all_done(produced, stored)
        if on_done is not None:
            both.add_done_callback(on_done)
        return both

    async def send(self, message: Message, retained: Message | None, acks: str | None) -> None:
        """Produce and wait for Kafka's acknowledgement (a will). Raises KafkaUnavailable."""
        future = await self.submit(message, retained, acks)
        try:
            await asyncio.wait_for(future, self.producer.timeout_s)
        except (KafkaUnavailable, TimeoutError) as exc:
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
        except Exception as exc:  # the producer's own errors (aiokafka's KafkaError...)
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every publish of one topic on one connection shares (see :meth:`Sender.records`)."""

    record: RecordPlan
    topic_header: tuple[str, bytes]  # mqtt-topic
    client_header: tuple[str, bytes]  # mqtt-client
    max_qos: int
    retain: bool
    caller: Caller  # what the route's inbound transform reads besides the payload


class Sender:
    """The publishing side of one connection: checks a PUBLISH and makes its records."""

    __slots__ = ("_origin", "_plans", "client_id", "ingest", "principal")

    def __init__(
        self, ingest: Ingest, client_id: str, principal: Principal, origin: Origin
    ) -> None:
        self.ingest = ingest
        self.client_id = client_id
        self.principal = principal
        self._origin = origin
        self._plans: dict[str, _Plan] | None = None  # by topic; made by the first publish

    def records(self, publish: Publish, topic: str) -> Records:
        """Route, authorize and validate ``publish`` (its topic alias resolved to ``topic``);
        its records. Raises :class:`PublishRefused`."""
        plans = self._plans
        plan = plans.get(topic) if plans is not None else None
        if plan is None:
            return self._first(publish, topic)
        route = plan.record.route
        value = _check(route, plan.max_qos, plan.retain, publish, plan.caller)[1]
        extra = (
            plan.topic_header,
            (records.QOS, records.QOS_BYTES[publish.qos]),
            plan.client_header,
            *records.publish_headers_tail(publish),
        )
        message = plan.record.message(value, extra, self._origin, time.time())
        self.ingest.planned += 1
        if publish.retain:
            return Records(route, message, self._retained(publish, topic, message))
        return Records(route, message, None)

    def _first(self, publish: Publish, topic: str) -> Records:
        try:
            validate_topic_name(topic)
        except TopicError as exc:
            raise PublishRefused(ReasonCode.TOPIC_NAME_INVALID, str(exc), "malformed") from exc
        match = self.ingest.route_of(topic)
        if match is None:
            raise PublishRefused(
                ReasonCode.TOPIC_NAME_INVALID, f"no route for topic {topic!r}", "no_route"
            )
        route, params = match.target, match.params
        denial = authorize(route, "publish", self.principal, params)
        if denial is not None:
            raise PublishRefused(ReasonCode.NOT_AUTHORIZED, denial.reason, "forbidden")
        config = self.ingest.config
        decision = (
            publish_decision(route, self.principal, config, PROTOCOL)
            if config is not None
            else None
        )
        if decision is not None and not decision.allowed:
            raise PublishRefused(
                ReasonCode.NOT_AUTHORIZED, f"route {route.name}: {decision.reason}", "jurisdiction"
            )
        assert route.mqtt is not None
        max_qos = int(route.mqtt.option("max_qos", 2))
        retain = bool(route.mqtt.option("retain", True))
        caller = self._caller(route, params, publish, topic)
        body, value = _check(route, max_qos, retain, publish, caller)
        origin = self.stamped_origin()
        try:
            plan = plan_record(
                route, params, origin, resolver(origin, topic, body), tags=tag_headers(decision)
            )
        except UnroutableMessage as exc:
            raise PublishRefused(
                ReasonCode.TOPIC_NAME_INVALID, str(exc), "unroutable", exc, route
            ) from exc
        extra = records.publish_headers(publish, topic, self.client_id)
        message = plan.message(value, extra, origin, origin.received_at)
        if not plan.per_record and not (wants_caller(route) and "headers" in _reads(route)):
            if self._plans is None or len(self._plans) >= PLANS:
                self._plans = {}
            self._plans[topic] = _Plan(plan, extra[0], extra[2], max_qos, retain, caller)
        return Records(route, message, self._retained(publish, topic, message))

    def _retained(self, publish: Publish, topic: str, message: Message) -> Message | None:
        if not publish.retain:
            return None
        return records.retained_record(
            topic, self.ingest.retained.topic, publish, message.headers, message.value
        )

    def _caller(self, route: Route, params: dict[str, str], publish: Publish, topic: str) -> Caller:
        """What the route's inbound transform reads: this connection's principal and region,
        the topic's parameters and the publish's user properties."""
        config = self.ingest.config
        region = region_of(self.principal, config, PROTOCOL) if config is not None else None
        resolve = resolver(self._origin, topic)
        headers = publish.properties.user_properties or ()
        return inbound_caller(route, self.principal, region, params, resolve, headers)

    def stamped_origin(self) -> Origin:
        """This connection's origin, timestamped now (the audit header of one record)."""
        base = self._origin
        return Origin(
            base.protocol, base.client_id, base.principal, base.remote_address, time.time()
        )

    async def refused(self, publish: Publish, topic: str, exc: PublishRefused) -> None:
        """Count a refusal; a payload problem goes through the core's dead-letter path, which
        counts it itself and keeps the payload in the route's dead-letter topic (if any). Done
        before the client is answered, as on HTTP: the record exists once the refusal is seen."""
        reject = self.ingest.reject
        if exc.payload_error is None or exc.route is None or reject is None:
            metrics.rejected(PROTOCOL, exc.metric)
            return
        await reject(exc.route, publish.payload, self.stamped_origin(), exc.payload_error, topic)


def _reads(route: Route) -> frozenset[str]:
    transform = route.transform
    inbound = transform.inbound if transform is not None else None
    return inbound.reads if inbound is not None else frozenset()


def _check(
    route: Route, max_qos: int, retain: bool, publish: Publish, caller: Caller = NOBODY
) -> tuple[Any, bytes | None]:
    """QoS, retain and schema of one publish on ``route``: the parsed body (or None) and the
    record's value (the canonical record when the route transforms what it receives)."""
    if publish.qos > max_qos:
        raise PublishRefused(
            ReasonCode.QOS_NOT_SUPPORTED,
            f"route {route.name} accepts QoS <= {max_qos}",
            "qos_not_supported",
        )
    if publish.retain and not retain:
        raise PublishRefused(
            ReasonCode.RETAIN_NOT_SUPPORTED,
            f"route {route.name} does not retain",
            "retain_not_supported",
        )
    payload = publish.payload
    try:
        if route.transform is not None and payload:
            admitted = admit(route, payload, publish.properties.content_type, caller)
            return admitted.document, admitted.value
        document = (
            validate_payload(route, payload, publish.properties.content_type)
            if payload or not publish.retain
            else None
        )
        return document, payload
    except InvalidPayload as exc:
        raise PublishRefused(
            ReasonCode.PAYLOAD_FORMAT_INVALID, str(exc), "schema", exc, route
        ) from exc
    except TransformFailed as exc:
        # The payload is what the route's source schema allows; the route's transform could
        # not make a canonical record of it: the route's problem as much as the sender's.
        raise PublishRefused(
            ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR, str(exc), "transform", exc, route
        ) from exc


def _count_in(
    inbound: InboundCounter,
    size: int,
    then: OnDone | None,
    future: asyncio.Future[Any],
) -> None:
    """A publish counts as a message in once Kafka acknowledged it; ``then`` answers it."""
    if not future.cancelled() and future.exception() is None:
        inbound.add(size)
    if then is not None:
        then(future)


def _all_done(*futures: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A future done when every one of ``futures`` is: with the first failure, else None.
    (Callbacks, not ``gather``: no task per publish.)"""
    combined: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    waiting = [len(futures)]

    def one_done(future: asyncio.Future[Any]) -> None:
        waiting[0] -= 1
        if combined.done():
            return
        if future.cancelled():
            combined.set_exception(KafkaUnavailable("the produce was cancelled"))
        elif future.exception() is not None:
            combined.set_exception(future.exception())  # type: ignore[arg-type]
        elif not waiting[0]:
            combined.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)
    return combined


def done() -> asyncio.Future[None]:
    """A future that is already done (an answer that waits for nothing)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
