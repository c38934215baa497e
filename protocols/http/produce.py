"""POST/PUT routes: validate at the edge, apply Idempotency-Key, produce, and maybe await a reply.

Order matters: everything that can refuse a request (content type, size, schema, key template,
authorization) runs before the idempotency claim, so a refused request neither produces a
record nor uses up its key; a client can fix the payload and retry with the same key.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

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
    Local,
    Remote,
    accepted,
    encode_response,
    verdict,
)
from protocols.http.options import HttpOptions
from protocols.http.prefer import Preferences, parse_prefer
from protocols.http.replies import reply_response

log = structlog.get_logger(__name__)

REPLIES_PREFIX = "/_edgebridge/replies/"
NO_PREFERENCES = Preferences()
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


# Made per request: a plain slots class (a frozen dataclass's __init__ costs ~0.1 us a field).
@dataclass(slots=True, eq=False)
class ProduceCall:
    """A produce request that passed the route's access and jurisdiction checks."""

    request: Request
    route: Route
    options: HttpOptions
    params: dict[str, str]
    principal: Principal
    tags: Sequence[tuple[str, bytes]] = ()  # jurisdiction (bridge.edge.governance.tag_headers)
    region: str | None = None  # the caller's, for a transform that reads it


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What a route's requests share, decided once per route and its HTTP options (the
    first time they are used; routes and options live as long as the bridge)."""

    wanted: str | None  # expected_media()
    reply_to: tuple[str, bytes] | None  # the reply-topic header, encoded


# Made per request: a plain slots class (a frozen dataclass's __init__ costs ~0.1 us a field).
@dataclass(slots=True, eq=False)
class Outgoing:
    """A request that passed every check: the record to produce and how to answer."""

    route: Route
    options: HttpOptions
    message: Message
    correlation: str
    prefs: Preferences
    claim: bytes | None = None  # the ledger claim's id (in the record's headers)


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

    async def handle(self, call: ProduceCall) -> Response:
        """The request's response (a Problem raised for a refusal)."""
        request, options = call.request, call.options
        plan, key = self._head(request, call.route, options)
        body = await request.body(options.max_body_bytes, self.body_timeout_s)
        try:
            outcome = self._produce(call, plan, key, body)
        except PayloadRefused as refused:
            await self._dead_letter(refused)
            raise refused.problem from refused.error
        # shield: a waiter cancelled (Hypercorn cancels an app whose client left) must not cancel
        # the produce's future, whose callbacks still settle the ledger.
        return outcome if isinstance(outcome, Response) else await asyncio.shield(outcome)

    def handle_now(self, call: ProduceCall) -> Response | asyncio.Future[Response]:
        """:meth:`handle` for a request whose body the server read (bridge/web/direct.py): the
        response now (a refusal), or its future, without a task on the way of a plain or
        idempotent produce. Raises Problem as ``handle`` does."""
        request, options = call.request, call.options
        plan, key = self._head(request, call.route, options)
        body = request.read_body(options.max_body_bytes)
        assert body is not None  # a direct request carries its body
        try:
            return self._produce(call, plan, key, body)
        except PayloadRefused as refused:
            return asyncio.ensure_future(self._refuse_after_dead_letter(refused))

    async def _refuse_after_dead_letter(self, refused: PayloadRefused) -> Response:
        await self._dead_letter(refused)
        raise refused.problem from refused.error

    async def _dead_letter(self, refused: PayloadRefused) -> None:
        origin, route, body, request = refused.origin, refused.route, refused.body, refused.request
        await reject_payload(
            self.producer, route, body, origin, refused.error, address=request.path
        )

    def _head(
        self, request: Request, route: Route, options: HttpOptions
    ) -> tuple[RoutePlan, str | None]:
        """What the head alone can refuse, before the body is read."""
        plan = self._plans.get((id(route), id(options)))
        if plan is None:
            plan = self._plans[(id(route), id(options))] = self._plan(route, options)
        if request.method != "DELETE":  # a tombstone (DELETE) has no body to check
            check_content_type(plan.wanted, request.header("content-type"))
        return plan, self._idempotency_key(request, options)

    def _produce(
        self, call: ProduceCall, plan: RoutePlan, key: str | None, body: bytes
    ) -> Response | asyncio.Future[Response]:
        """Everything after the body: admit, build the record, then produce (at most once per
        key). Raises PayloadRefused (a dead letter to write first) or Problem."""
        request, route, options, params = call.request, call.route, call.options, call.params
        principal, tags, region = call.principal, call.tags, call.region
        content_type = request.header("content-type")
        origin = Origin("http", principal=principal.identity, remote_address=request.client)
        if request.method == "DELETE":
            admitted = Admitted(None, None)
        else:
            resolve = resolver(origin, request.path)
            caller = inbound_caller(route, principal, region, params, resolve, request.headers)
            try:
                admitted = admit(route, body, content_type, caller)
            except (TransformFailed, InvalidPayload) as exc:
                raise PayloadRefused(
                    _refusal(route, exc), exc, route, body, origin, request
                ) from exc
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
        # The ledger's claim id, in the record from the start: a new owner recovering the key
        # searches the topic for it (chosen now rather than copying the record when claimed).
        claim = secrets.token_bytes(16) if scoped is not None else None
        if claim is not None:
            headers.append((CLAIM_HEADER, claim.hex().encode()))
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
            problem = Problem(
                400,
                "unroutable",
                f"{exc}: the request lacks a value the route's key or headers need",
            )
            raise PayloadRefused(problem, exc, route, body, origin, request) from exc
        out = Outgoing(
            route,
            options,
            message,
            correlation,
            # Prefer (wait, respond-async) only matters to a route that waits for a reply.
            parse_prefer(request.header_values("prefer"))
            if options.reply_topic
            else NO_PREFERENCES,
            claim,
        )
        if scoped is None:
            return self._send_soon(out)
        fp = idempotency.fingerprint(request.method, request.path, content_type, body, document)
        return self._send_once_soon(out, scoped, fp, request, body)

    @staticmethod
    def _plan(route: Route, options: HttpOptions) -> RoutePlan:
        reply_to = (REPLY_TO_HEADER, options.reply_topic.encode()) if options.reply_topic else None
        return RoutePlan(expected_media(route), reply_to)

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

    def _send_once_soon(
        self, out: Outgoing, scoped: bytes, fp: str, request: Request, body: bytes
    ) -> Response | asyncio.Future[Response]:
        """Produce at most once per scoped key, on any instance; replay the stored response.

        Only the instance that owns the key's ledger partition decides; any other forwards the
        request to it (see protocols/http/idempotency.py). Without a task when this instance
        owns the key and ownership is settled (the common case)."""
        where = self.store.locate_now(scoped)
        if where is None:  # ownership is moving: wait for it in a task
            return asyncio.ensure_future(self._send_once(out, scoped, fp, request, body))
        return self._decided(out, where, scoped, fp, request, body)

    async def _send_once(
        self, out: Outgoing, scoped: bytes, fp: str, request: Request, body: bytes
    ) -> Response:
        try:
            where = await self.store.locate(scoped)
        except LedgerUnavailable as exc:
            raise moving(str(exc)) from exc
        outcome = self._decided(out, where, scoped, fp, request, body)
        return outcome if isinstance(outcome, Response) else await outcome

    def _decided(
        self,
        out: Outgoing,
        where: Local | Remote,
        scoped: bytes,
        fp: str,
        request: Request,
        body: bytes,
    ) -> Response | asyncio.Future[Response]:
        if isinstance(where, Remote):
            if self.forwarder is None:
                raise moving("this key is owned by another instance and forwarding is off")
            timeout = out.options.lease_s(self.producer.timeout_s)
            return asyncio.ensure_future(
                self.forwarder.forward(where.address, request, body, timeout)
            )
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
        claiming = self.store.claim(where, scoped, fp, out.message.topic, hints, recipe, out.claim)
        response: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        # The claim's work runs to its end even if the client goes away (nothing here is
        # cancelled with the request): once a record may be in Kafka, only a completion (or a
        # new owner's recovery) may change the key's state.
        claiming.add_done_callback(partial(self._claim_settled, out, response))
        return response

    def _claim_settled(
        self, out: Outgoing, response: asyncio.Future[Response], claiming: asyncio.Future[Claimed]
    ) -> None:
        error = asyncio.CancelledError() if claiming.cancelled() else claiming.exception()
        if error is not None:
            _settle_response(response, unavailable(str(error)))
            return
        try:
            self._send_soon(out, claimed=claiming.result(), response=response)
        except Problem as problem:  # refused before anything reached Kafka
            self._claimed_failed(out, claiming.result(), problem)
            _settle_response(response, problem)

    def _claimed_failed(self, out: Outgoing, claimed: Claimed, error: BaseException) -> None:
        """The claimed key's record failed: free the key, or keep it pending while Kafka may
        still store the record."""
        if isinstance(error, Problem) and error.status != 503:
            self.store.release(claimed)
            return
        # Kafka did not acknowledge, but it may have stored the record: the key stays pending
        # (409) until a search of the topic says whether it did.
        detail = error.detail if isinstance(error, Problem) else repr(error)
        log.warning("http.idempotency_outcome_unknown", route=out.route.name, error=detail)
        self.store.unknown_outcome(claimed)

    def _produced_claimed(
        self,
        out: Outgoing,
        claimed: Claimed,
        response: asyncio.Future[Response],
        produced: asyncio.Future[Response],
    ) -> None:
        """:meth:`_send_soon`'s task (a route that waits for a reply) is done."""
        error: BaseException | None = (
            asyncio.CancelledError() if produced.cancelled() else produced.exception()
        )
        if error is None:
            answer = produced.result()
            self.store.complete(claimed, encode_response(answer), out.options.idempotency_ttl_s)
            _settle_response(response, answer)
            return
        self._claimed_failed(out, claimed, error)
        _settle_response(response, error)

    def _send_soon(
        self,
        out: Outgoing,
        claimed: Claimed | None = None,
        response: asyncio.Future[Response] | None = None,
    ) -> asyncio.Future[Response]:
        """Produce ``out``: the future of its response (``response``, if given). A callback
        on Kafka's acknowledgement for a route without replies (no task, no coroutine); a task
        for one that waits for a reply, or while the producer or the topic's metadata is not
        ready. With ``claimed``, the ledger learns the outcome before the response is set."""
        if response is None:
            response = asyncio.get_running_loop().create_future()
        if out.options.reply_topic is None:
            acked = partial(self._on_ack, out, response, claimed)
            try:
                sent = self.producer.submit_now(out.message, out.route.acks or None, acked)
            except KafkaUnavailable as exc:
                raise unavailable(str(exc)) from exc
            if sent is not None:
                return response
        task = asyncio.ensure_future(self._send(out))
        if claimed is not None:
            task.add_done_callback(partial(self._produced_claimed, out, claimed, response))
        else:
            task.add_done_callback(partial(_settle_from, response))
        return response

    def _on_ack(
        self,
        out: Outgoing,
        response: asyncio.Future[Response],
        claimed: Claimed | None,
        record: asyncio.Future[Any],
    ) -> None:
        error = KafkaUnavailable("cancelled") if record.cancelled() else record.exception()
        if error is not None:
            problem = unavailable(f"Kafka did not acknowledge: {error!r}")
            if claimed is not None:
                self._claimed_failed(out, claimed, problem)
            _settle_response(response, problem)
            return
        metadata = record.result()
        answer = self._accepted(out, metadata.topic, metadata.partition, metadata.offset)
        if claimed is not None:
            self.store.complete(claimed, encode_response(answer), out.options.idempotency_ttl_s)
        _settle_response(response, answer)

    def _accepted(self, out: Outgoing, topic: str, partition: int, offset: int) -> Response:
        """The record is in Kafka: count it, remember its offset (recovery hints), and the
        ``202`` of a produce that waits for no reply."""
        self._count_in(out.route.name, len(out.message.value or b""))
        seen = self._acked.setdefault(topic, {})
        if offset + 1 > seen.get(partition, 0):
            seen[partition] = offset + 1
        if self.debug:
            log.debug("http.produced", route=out.route.name, partition=partition, offset=offset)
        return accepted(topic, partition, offset, out.correlation)

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
            accepted = self._accepted(out, produced.topic, produced.partition, produced.offset)
            if follower is None or future is None:
                return accepted
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


def _settle_from(response: asyncio.Future[Response], task: asyncio.Future[Response]) -> None:
    if task.cancelled():
        response.cancel()
    else:
        error = task.exception()
        _settle_response(response, task.result() if error is None else error)


def _settle_response(response: asyncio.Future[Response], answer: Response | BaseException) -> None:
    """Set ``response`` unless whoever waited gave up on it (cancelled)."""
    if response.done():
        return
    if isinstance(answer, BaseException):
        response.set_exception(answer)
    else:
        response.set_result(answer)


class PayloadRefused(Exception):
    """A body the route refuses: ``problem`` answers it once its dead letter is written."""

    def __init__(
        self,
        problem: Problem,
        error: Exception,
        route: Route,
        body: bytes,
        origin: Origin,
        request: Request,
    ) -> None:
        super().__init__(problem.detail)
        self.problem = problem
        self.error = error
        self.route = route
        self.body = body
        self.origin = origin
        self.request = request


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
