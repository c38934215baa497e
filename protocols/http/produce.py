"""POST/PUT routes: validate at the edge, apply Idempotency-Key, produce, and maybe await a reply.

Order matters: everything that can refuse a request (content type, size, schema, key template,
authorization) runs before the idempotency claim, so a refused request neither produces a
record nor uses up its key; a client can fix the payload and retry with the same key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from bridge.edge.access import Principal
from bridge.edge.dead_letters import reject_payload
from bridge.edge.record_builder import UnroutableMessage, build_message, resolver
from bridge.edge.transform import Admitted, TransformFailed, admit, inbound_caller
from bridge.edge.validation import InvalidPayload
from bridge.kafka.producer import Producer
from bridge.kafka.replies import ReplyFollower
from bridge.model.config import Route
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message, Origin
from bridge.model.position import Position, stream_tag
from bridge.model.request_reply import CORRELATION_HEADER, REPLY_TO_HEADER
from bridge.telemetry import metrics
from bridge.web.problem import Problem
from protocols.http import idempotency
from protocols.http.asgi import BODY_TIMEOUT_S, Request, Response
from protocols.http.forwarding import Forwarder, moving
from protocols.http.idempotency import (
    CLAIM_HEADER,
    Claimed,
    IdempotencyStore,
    LedgerUnavailable,
    Remote,
    encode_response,
    verdict,
)
from protocols.http.options import HttpOptions
from protocols.http.prefer import Preferences, parse_prefer
from protocols.http.replies import reply_response

log = structlog.get_logger(__name__)

REPLIES_PREFIX = "/_edgebridge/replies/"
RETRY_AFTER_S = "2"


def unavailable(detail: str) -> Problem:
    return Problem(503, "kafka-unavailable", detail, headers={"retry-after": RETRY_AFTER_S})


def reply_location(route: Route, correlation: str, after: Mapping[int, int]) -> str:
    epoch = after.epoch if isinstance(after, Position) else 0  # the reply topic's incarnation
    encoded = Position(after, epoch).encode(stream_tag(route.name, correlation))
    return f"{REPLIES_PREFIX}{route.name}/{correlation}?after={encoded}"


def expected_media(route: Route) -> str | None:
    """The media type a route's bodies must have (JSON if it has a schema), lower-cased."""
    expected = route.content_type or ("application/json" if route.schema is not None else None)
    return None if expected is None else expected.split(";", 1)[0].strip().lower()


def check_content_type(wanted: str | None, content_type: str | None) -> None:
    """415 unless the body's media type is ``wanted`` (:func:`expected_media` of the route,
    computed once per route) or, for JSON, a ``+json`` type."""
    if wanted is None:
        return
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == wanted:
        return
    json_like = (
        wanted == "application/json"
        and media.startswith("application/")
        and media.endswith("+json")
    )
    if not json_like:
        raise Problem(
            415,
            "unsupported-media-type",
            f"this route takes {wanted}, not {media or 'a body without Content-Type'}",
            headers={"accept-post": wanted},
        )


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What a route's requests share, decided once per route and its HTTP options (the
    first time they are used; routes and options live as long as the bridge)."""

    wanted: str | None  # expected_media()
    reply_to: tuple[str, bytes] | None  # the reply-topic header, encoded


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A request that passed every check: the record to produce and how to answer."""

    route: Route
    options: HttpOptions
    message: Message
    correlation: str
    prefs: Preferences


class ProduceHandler:
    def __init__(
        self,
        producer: Producer,
        store: IdempotencyStore,
        followers: dict[str, ReplyFollower],
        debug: bool = False,
        forwarder: Forwarder | None = None,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.body_timeout_s = body_timeout_s
        self.producer = producer
        self.store = store
        self.followers = followers
        self.debug = debug
        self.forwarder = forwarder
        self._counted: dict[str, metrics.Inbound] = {}
        self._plans: dict[tuple[int, int], RoutePlan] = {}
        # Per topic and partition, the offset after the last record acknowledged here: a claim's
        # hint (its record will be at or after it), where a recovery starts searching.
        self._acked: dict[str, dict[int, int]] = {}

    async def handle(
        self,
        request: Request,
        route: Route,
        options: HttpOptions,
        params: dict[str, str],
        principal: Principal,
        tags: Sequence[tuple[str, bytes]] = (),
        region: str | None = None,
    ) -> Response:
        plan = self._plans.get((id(route), id(options)))
        if plan is None:
            plan = self._plans[(id(route), id(options))] = self._plan(route, options)
        content_type = request.header("content-type")
        deleting = request.method == "DELETE"  # a tombstone: the key's value is gone
        if not deleting:
            check_content_type(plan.wanted, content_type)
        key = self._idempotency_key(request, options)
        body = await request.body(options.max_body_bytes, self.body_timeout_s)
        origin = Origin("http", principal=principal.identity, remote_address=request.client)
        admitted = (
            Admitted(None, None)
            if deleting
            else await self._admit(request, route, body, origin, principal, params, region)
        )
        document = admitted.document
        scoped: bytes | None = None
        if key is not None:
            scoped = idempotency.scope_key(route.name, principal.identity, key)
            correlation = idempotency.correlation_id(scoped)
        else:
            correlation = secrets.token_hex(16)  # as uuid4().hex: 32 random hex digits
        extra = {"$idempotency_key": key, "$correlation_id": correlation}
        headers = [(CORRELATION_HEADER, correlation.encode())]
        if plan.reply_to is not None:
            headers.append(plan.reply_to)
        try:
            message = build_message(
                route,
                params,
                admitted.value,
                origin,
                resolver(origin, request.path, document, extra),
                headers,
                tags=tags,
            )
        except UnroutableMessage as exc:
            await reject_payload(self.producer, route, body, origin, exc, address=request.path)
            raise Problem(
                400,
                "unroutable",
                f"{exc}: the request lacks a value the route's key or headers need",
            ) from exc
        out = Outgoing(
            route, options, message, correlation, parse_prefer(request.header_values("prefer"))
        )
        if scoped is None:
            return await self._send(out)
        fp = idempotency.fingerprint(request.method, request.path, content_type, body, document)
        return await self._send_once(out, scoped, fp, request, body)

    @staticmethod
    def _plan(route: Route, options: HttpOptions) -> RoutePlan:
        reply_to = (REPLY_TO_HEADER, options.reply_topic.encode()) if options.reply_topic else None
        return RoutePlan(expected_media(route), reply_to)

    async def _admit(
        self,
        request: Request,
        route: Route,
        body: bytes,
        origin: Origin,
        principal: Principal,
        params: Mapping[str, str],
        region: str | None,
    ) -> Admitted:
        """The body checked against the route's schema (or transformed into its canonical
        record), parsed if it is JSON."""
        resolve = resolver(origin, request.path)
        caller = inbound_caller(route, principal, region, params, resolve, request.headers)
        try:
            return admit(route, body, request.header("content-type"), caller)
        except (TransformFailed, InvalidPayload) as exc:
            await reject_payload(self.producer, route, body, origin, exc, address=request.path)
            raise _refusal(route, exc) from exc

    def _idempotency_key(self, request: Request, options: HttpOptions) -> str | None:
        if options.idempotency == "off":
            return None
        try:
            key = idempotency.parse_key(request.header("idempotency-key"))
        except ValueError as exc:
            raise Problem(400, "invalid-idempotency-key", str(exc)) from exc
        if key is None and options.idempotency == "required":
            raise Problem(
                400, "idempotency-key-missing", "this route requires an Idempotency-Key header"
            )
        return key

    async def _send_once(
        self, out: Outgoing, scoped: bytes, fp: str, request: Request, body: bytes
    ) -> Response:
        """Produce at most once per scoped key, on any instance; replay the stored response.

        Only the instance that owns the key's ledger partition decides; any other forwards the
        request to it (see protocols/http/idempotency.py)."""
        try:
            where = await self.store.locate(scoped)
        except LedgerUnavailable as exc:
            raise moving(str(exc)) from exc
        if isinstance(where, Remote):
            if self.forwarder is None:
                raise moving("this key is owned by another instance and forwarding is off")
            timeout = out.options.lease_s(self.producer.timeout_s)
            return await self.forwarder.forward(where.address, request, body, timeout)
        if where.entry is not None:
            return verdict(where.entry, fp)
        options = out.options
        follower = self.followers.get(options.reply_topic) if options.reply_topic else None
        # What a new owner answers if this one dies before storing the response.
        recipe = (
            reply_location(out.route, out.correlation, follower.position())
            if follower is not None
            else ""
        )
        hints = dict(self._acked.get(out.message.topic, {}))
        try:
            claimed = await self.store.claim(where, scoped, fp, out.message.topic, hints, recipe)
        except KafkaUnavailable as exc:
            raise unavailable(str(exc)) from exc
        # The claim's work runs to its end even if the client goes away: once a record may be
        # in Kafka, only a completion (or a new owner's recovery) may change the key's state.
        work = asyncio.ensure_future(self._produce_claimed(out, claimed))
        return await asyncio.shield(work)

    async def _produce_claimed(self, out: Outgoing, claimed: Claimed) -> Response:
        tagged = dataclasses.replace(
            out.message,
            headers=(*out.message.headers, (CLAIM_HEADER, claimed.claim.hex().encode())),
        )
        try:
            response = await self._send(dataclasses.replace(out, message=tagged))
        except Problem as problem:
            if problem.status == 503:
                # Kafka did not acknowledge, but it may have stored the record: the key stays
                # pending (409) until a search of the topic says whether it did.
                log.warning(
                    "http.idempotency_outcome_unknown", route=out.route.name, error=problem.detail
                )
                self.store.unknown_outcome(claimed)
            else:
                self.store.release(claimed)
            raise
        except BaseException:
            self.store.unknown_outcome(claimed)
            raise
        self.store.complete(claimed, encode_response(response), out.options.idempotency_ttl_s)
        return response

    async def _send(self, out: Outgoing) -> Response:
        route, options, correlation, prefs = out.route, out.options, out.correlation, out.prefs
        follower = self.followers.get(options.reply_topic) if options.reply_topic else None
        future = follower.expect(correlation) if follower is not None else None
        after = follower.position() if follower is not None else None
        try:
            try:
                produced = await self.producer.send(out.message, route.acks or None)
            except KafkaUnavailable as exc:
                raise unavailable(str(exc)) from exc
            self._count_in(route.name, len(out.message.value or b""))
            seen = self._acked.setdefault(produced.topic, {})
            if produced.offset + 1 > seen.get(produced.partition, 0):
                seen[produced.partition] = produced.offset + 1
            if self.debug:
                log.debug(
                    "http.produced",
                    route=route.name,
                    partition=produced.partition,
                    offset=produced.offset,
                )
            if follower is None or future is None:
                acked = {
                    "topic": produced.topic,
                    "partition": produced.partition,
                    "offset": produced.offset,
                    "correlationId": correlation,
                }
                return Response.json(
                    202, json.dumps(acked).encode(), [(CORRELATION_HEADER, correlation)]
                )
            wait = (
                0.0 if prefs.respond_async else prefs.wait(options.reply_wait_s, options.wait_max_s)
            )
            reply = await follower.wait(future, wait) if wait > 0 else None
            if reply is not None:
                metrics.message_out(route.name, "http", len(reply.value or b""))
                return reply_response(reply)
            applied = [("preference-applied", "respond-async")] if prefs.respond_async else []
            assert after is not None
            location = reply_location(route, correlation, after)
            pending = json.dumps({"correlationId": correlation, "location": location}).encode()
            return Response.json(
                202, pending, [("location", location), (CORRELATION_HEADER, correlation), *applied]
            )
        finally:
            if follower is not None:
                follower.forget(correlation)

    def _count_in(self, route: str, size: int) -> None:
        counted = self._counted.get(route)
        if counted is None:
            counted = self._counted[route] = metrics.Inbound(route, "http")
        counted.add(size)


def _refusal(route: Route, error: TransformFailed | InvalidPayload) -> Problem:
    """422 when the route's transform could not make a record of a body its source schema
    allows; 400 when the body breaks the (source) schema or strict JSON."""
    errors = [v.as_dict() for v in error.violations]
    if isinstance(error, TransformFailed):
        detail = f"the body cannot be made a record of route {route.name}: {error.detail}"
        return Problem(422, "transform-failed", detail, errors=errors)
    transform = route.transform
    if transform is not None and transform.source_schema is not None:
        what = "the source schema of route " + route.name
    else:
        what = "the schema of route " + route.name if route.schema else "strict JSON"
    return Problem(400, "invalid-payload", f"the body does not match {what}", errors=errors)
