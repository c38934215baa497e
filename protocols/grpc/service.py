"""``edgebridge.v1.Bridge``: Produce, Subscribe and Request over the core's one edge policy.

Every call runs the same steps as the other front-ends, in the same order: the bearer token from
the ``authorization`` metadata through the guard, the route's access rule, the payload through
strict JSON and the route's schema, the record through the record builder (audit headers
included), and only then Kafka. A refusal at any step is a gRPC status (protocols/grpc/status.py)
and a log line, and nothing is produced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import structlog
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message as Message_

from bridge.edge.access import ANONYMOUS, Action, Principal, authorize
from bridge.edge.credentials import bearer_token
from bridge.edge.dead_letters import reject_payload
from bridge.edge.governance import region_of
from bridge.edge.guard import AuthError, Guard
from bridge.edge.idempotency import (
    CLAIM_HEADER,
    Claimed,
    IdempotencyStore,
    LedgerUnavailable,
    Remote,
    correlation_id,
    fingerprint,
    parse_key,
    scope_key,
)
from bridge.edge.record_builder import UnroutableMessage, build_message, resolver
from bridge.edge.transform import (
    TransformFailed,
    admit,
    inbound_caller,
    projector_for,
    through,
)
from bridge.edge.validation import InvalidPayload, Violation
from bridge.kafka.hub import Hub
from bridge.kafka.producer import Producer
from bridge.kafka.replies import ReplyFollower
from bridge.kafka.stream_start import another_incarnation
from bridge.model import strict_json
from bridge.model.config import Config, Route
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Message, Origin, Produced
from bridge.model.position import Position, PositionError
from bridge.model.request_reply import CORRELATION_HEADER, REPLY_TO_HEADER
from bridge.telemetry import metrics
from protocols.grpc import edgebridge_pb2 as pb
from protocols.grpc import status
from protocols.grpc.idempotency import (
    FORWARDED_METADATA,
    KEY_METADATA,
    REPLAYED_METADATA,
    Forwarder,
    fill_reply,
    moving,
    verdict,
)
from protocols.grpc.options import GrpcRouteOptions
from protocols.grpc.replies import reply_message
from protocols.grpc.status import Refusal
from protocols.grpc.stream import (
    RESUME_METADATA,
    Channel,
    GrpcStream,
    beginning_of,
    check_reachable,
)

log = structlog.get_logger(__name__)

SERVICE = "edgebridge.v1.Bridge"
PRODUCE_METHOD = f"/{SERVICE}/Produce"
PROTOCOL = "grpc"
COUNTED_ELSEWHERE = {"invalid-payload", "unroutable", "invalid-token"}
STREAM_WINDOW = 256  # ProduceStream: records produced but not yet answered, at most


class BridgeService:
    def __init__(
        self,
        guard: Guard,
        routes: Mapping[str, Route],
        producer: Producer,
        hub: Hub,
        followers: Mapping[str, ReplyFollower],
        max_queued: int,
    ) -> None:
        self.guard = guard
        self.routes = dict(routes)
        self.options = {name: GrpcRouteOptions.of(r.grpc or {}) for name, r in routes.items()}
        self.producer = producer
        self.hub = hub
        self.followers = followers
        self.max_queued = max_queued
        self.channels: dict[tuple[str, tuple[tuple[str, str], ...]], Channel] = {}
        self.streams: set[GrpcStream] = set()
        self.slow_closes = 0
        # Set by the front-end when a route takes idempotency keys (after the port is bound:
        # the ledger names this instance by its address).
        self.store: IdempotencyStore | None = None
        self.forwarder: Forwarder | None = None
        self.config: Config | None = None  # set by the front-end: the callers' regions
        # Method path -> its reply class: what a stored or rebuilt reply is (the claim's recipe).
        self.replies: dict[str, type[Message_]] = {PRODUCE_METHOD: pb.ProduceReply}
        # Per topic and partition, the offset after the last record acknowledged here: a
        # claim's hint (its record will be at or after it), where a recovery starts searching.
        self._acked: dict[str, dict[int, int]] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        identity = bytes  # events are serialized once per channel (stream.py)
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Produce": grpc.unary_unary_rpc_method_handler(
                    self.produce,
                    request_deserializer=pb.ProduceRequest.FromString,
                    response_serializer=pb.ProduceReply.SerializeToString,
                ),
                "Subscribe": grpc.unary_stream_rpc_method_handler(
                    self.subscribe,
                    request_deserializer=pb.SubscribeRequest.FromString,
                    response_serializer=identity,
                ),
                "ProduceStream": grpc.stream_stream_rpc_method_handler(
                    self.produce_stream,
                    request_deserializer=pb.ProduceRequest.FromString,
                    response_serializer=pb.ProduceReply.SerializeToString,
                ),
                "Request": grpc.unary_unary_rpc_method_handler(
                    self.request,
                    request_deserializer=pb.ProduceRequest.FromString,
                    response_serializer=pb.Reply.SerializeToString,
                ),
            },
        )

    def bound_handlers(self) -> list[grpc.GenericRpcHandler]:
        """Handlers of the users' own ``.proto`` methods bound to routes (``[routes.grpc] proto``
        + ``produce``), one generic handler per service."""
        services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for route in self.routes.values():
            binding = route.grpc_produce
            if binding is None:
                continue
            pool = binding.pool
            request_cls = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(binding.input_type)
            )
            reply_cls = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(binding.output_type)
            )
            self.replies[binding.path] = reply_cls

            async def handle(
                message: Message_,
                context: grpc.aio.ServicerContext,
                route: Route = route,
                reply_cls: type[Message_] = reply_cls,
            ) -> Message_:
                return await self._bound_produce(route, message, reply_cls, context)

            services.setdefault(binding.service, {})[binding.method] = (
                grpc.unary_unary_rpc_method_handler(
                    handle,
                    request_deserializer=request_cls.FromString,
                    response_serializer=reply_cls.SerializeToString,
                )
            )
        return [
            grpc.method_handlers_generic_handler(service, methods)
            for service, methods in services.items()
        ]

    async def _bound_produce(
        self,
        route: Route,
        message: Message_,
        reply_cls: type[Message_],
        context: grpc.aio.ServicerContext,
    ) -> Message_:
        """A bound method's request, as the route's JSON, through the same steps as Produce."""
        document = json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        params = {
            p: str(document[p])
            for p in _template_parameters(route)
            if isinstance(document.get(p), (str, int, float)) and not isinstance(document[p], bool)
        }
        request = pb.ProduceRequest(
            route=route.name, params=params, value=strict_json.dumps(document)
        )
        method = route.grpc_produce.path if route.grpc_produce else route.name
        try:
            route, origin, principal = self._admit(route.name, params, context, "publish")
            key = self._idempotency_key(route, context)
            if key is not None:
                raw = message.SerializeToString()
                once = await self._produce_once(
                    route, request, origin, principal, key, method, raw, context
                )
                return reply_cls.FromString(once)
            record, correlation, _ = await self._record(
                route, request, origin, None, principal=principal
            )
            produced = await self._send(route, record, context)
        except Refusal as refusal:
            await self._refuse(context, method, route.name, refusal)
            raise AssertionError("unreachable") from None
        return reply_cls.FromString(
            fill_reply(
                reply_cls(), produced.topic, produced.partition, produced.offset, correlation
            )
        )

    # -- the three methods ----------------------------------------------------------------------

    async def produce(
        self, request: pb.ProduceRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProduceReply:
        try:
            route, origin, principal = self._admit(
                request.route, request.params, context, "publish"
            )
            key = self._idempotency_key(route, context)
            if key is not None:
                raw = request.SerializeToString()
                once = await self._produce_once(
                    route, request, origin, principal, key, PRODUCE_METHOD, raw, context
                )
                return pb.ProduceReply.FromString(once)
            message, correlation, _ = await self._record(
                route, request, origin, None, principal=principal
            )
            produced = await self._send(route, message, context)
        except Refusal as refusal:
            await self._refuse(context, "Produce", request.route, refusal)
            raise AssertionError("unreachable") from None  # abort raises
        return pb.ProduceReply(
            topic=produced.topic,
            partition=produced.partition,
            offset=produced.offset,
            correlation_id=correlation,
        )

    async def produce_stream(
        self, requests: AsyncIterator[pb.ProduceRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Many records on one call: each request checked in order (guard, access, schema,
        record), then produced without waiting for the previous one's acknowledgement (at most
        STREAM_WINDOW unanswered), the replies written in request order. What a unary call
        spends per record in grpcio (a call's set-up, metadata, status) is paid once.

        A refused request ends the call with its status once the replies before it are
        written; nothing after it is read or produced. Kafka refusing a record (UNAVAILABLE)
        ends it the same way; records sent after that one may have been written, as with any
        produce whose answer was lost. No idempotency keys here (they are per call): a partner
        resumes after the last reply it received."""
        window = asyncio.Semaphore(STREAM_WINDOW)
        sends: asyncio.Queue[asyncio.Future[Produced] | None] = asyncio.Queue()
        replies: list[str] = []  # correlation ids, in the order of ``sends``

        async def write_replies() -> None:
            index = 0
            try:
                while (sent := await sends.get()) is not None:
                    produced = await sent  # a Refusal ends the writer (and the call)
                    window.release()
                    await context.write(
                        pb.ProduceReply(
                            topic=produced.topic,
                            partition=produced.partition or 0,
                            offset=produced.offset or 0,
                            correlation_id=replies[index],
                        )
                    )
                    index += 1
            except BaseException:
                for _ in range(STREAM_WINDOW):  # a reader waiting for room must see the end
                    window.release()
                raise

        writer = asyncio.ensure_future(write_replies())
        name = ""
        refusal: Refusal | None = None
        try:
            try:
                async for request in requests:
                    name = request.route
                    route, origin, caller = self._admit(name, request.params, context, "publish")
                    message, correlation, _ = await self._record(
                        route, request, origin, None, principal=caller
                    )
                    await window.acquire()
                    if writer.done():
                        break  # a send was refused: its status ends the call
                    replies.append(correlation)
                    sends.put_nowait(asyncio.ensure_future(self._send(route, message, context)))
            except Refusal as refused:
                refusal = refused
            finally:
                sends.put_nowait(None)
            try:
                await writer  # every reply before the end (or a refused send's Refusal)
            except Refusal as refused:
                refusal = refused  # it came before anything the reader refused
            if refusal is not None:
                await self._refuse(context, "ProduceStream", name, refusal)
        finally:
            writer.cancel()

    async def request(
        self, request: pb.ProduceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Reply:
        try:
            route, origin, principal = self._admit(
                request.route, request.params, context, "publish"
            )
            options = self.options[route.name]
            follower = self.followers.get(options.reply_topic) if options.reply_topic else None
            if follower is None:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "no-reply-topic",
                    f"route {route.name} has no [routes.grpc] reply_topic: use Produce",
                )
            message, correlation, _ = await self._record(
                route, request, origin, options.reply_topic, principal=principal
            )
            future = follower.expect(correlation)
            try:
                await self._send(route, message, context)
                wait = _within_deadline(options.reply_wait_s, context)
                try:
                    reply = await asyncio.wait_for(asyncio.shield(future), wait)
                except TimeoutError:
                    raise Refusal(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "no-reply",
                        f"no reply on {options.reply_topic} within {wait:.3g} s "
                        f"(correlation-id {correlation}); the request was produced",
                    ) from None
            finally:
                follower.forget(correlation)
        except Refusal as refusal:
            await self._refuse(context, "Request", request.route, refusal)
            raise AssertionError("unreachable") from None
        metrics.message_out(route.name, PROTOCOL, len(reply.value or b""))
        return reply_message(reply)

    async def subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        try:
            stream, first = await self._open(request, context)
        except Refusal as refusal:
            await self._refuse(context, "Subscribe", request.route, refusal)
            return
        self.streams.add(stream)
        stream.writer = asyncio.current_task()
        metrics.connection_opened(PROTOCOL)
        try:
            # context.write(), not a generator: a write blocked by the client's flow-control
            # window can be interrupted for the RESOURCE_EXHAUSTED status (trailers are not
            # flow-controlled), which a generator's pending yield (in grpcio's task) cannot.
            stream.writing = True  # a long snapshot to a stalled client is bounded too
            if await self._write_all(stream, first, context):
                while True:
                    events = await stream.take()
                    if not events or not await self._write_all(stream, events, context):
                        break
            if stream.expired:
                log.info("grpc.token_expired", route=stream.channel.route.name, peer=context.peer())
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"the token expired; subscribe again with a fresh one and the "
                    f"{RESUME_METADATA} of the last event received",
                )
            if stream.overflowed:
                self.slow_closes += 1
                metrics.slow_client_disconnected(PROTOCOL)
                log.warning(
                    "grpc.slow_client_closed",
                    route=stream.channel.route.name,
                    peer=context.peer(),
                    limit=stream.limit,
                )
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this stream fell {stream.limit} events behind; "
                    f"resume with the {RESUME_METADATA} of the last event received",
                )
        finally:
            stream.close()
            self.streams.discard(stream)
            metrics.connection_closed(PROTOCOL)
            self._release(stream.channel)

    @staticmethod
    async def _write_all(
        stream: GrpcStream, events: list[bytes], context: grpc.aio.ServicerContext
    ) -> bool:
        """Write ``events`` in order; False once the stream overflowed (cut off).

        The fast path is a plain ``await context.write``: no task per write. A write blocked by
        the client's window is interrupted by the overflow itself (:meth:`GrpcStream.deliver`
        cancels this task), and the call then ends with RESOURCE_EXHAUSTED.
        """
        try:
            for event in events:
                await context.write(event)
                if stream.overflowed or stream.expired:
                    return False
        except asyncio.CancelledError:
            if not (stream.overflowed or stream.expired):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own interrupt, not a cancellation of the call
            return False
        return True

    # -- the steps ------------------------------------------------------------------------------

    def _admit(
        self,
        name: str,
        params: Mapping[str, str],
        context: grpc.aio.ServicerContext,
        action: Action,
    ) -> tuple[Route, Origin, Principal]:
        """Who is calling, which route, and may they: guard, then access."""
        metadata = _metadata(context)
        try:
            principal = self.guard.authenticate(bearer_token(metadata.get("authorization")))
        except AuthError as exc:
            metrics.auth_rejected(PROTOCOL, exc)
            raise status.unauthenticated(exc) from exc
        route = self.routes.get(name)
        if route is None:
            raise Refusal(
                grpc.StatusCode.NOT_FOUND,
                "no-route",
                f"no route {name!r} is reachable over gRPC"
                + (f"; routes: {', '.join(sorted(self.routes))}" if self.routes else ""),
            )
        known = _template_parameters(route)
        unknown = sorted(set(params) - known)
        if unknown:
            raise status.invalid(
                "unknown-params",
                f"route {route.name} has no parameter {', '.join(unknown)}"
                f" (it has: {', '.join(sorted(known)) or 'none'})",
                [Violation(f"/params/{p}", "not a parameter of the route") for p in unknown],
            )
        identity = route.access.identity
        if identity is not None and identity not in params:
            # access.authorize checks an identity parameter only when the address has one; a
            # gRPC caller that leaves it out would otherwise read every owner's records.
            raise status.invalid(
                "missing-params",
                f"route {route.name} needs the parameter {identity} (your identity)",
                [Violation(f"/params/{identity}", "required by the route")],
            )
        denial = authorize(route, action, principal, params)
        if denial is not None:
            raise status.denied(denial)
        origin = Origin(PROTOCOL, principal=principal.identity, remote_address=context.peer())
        return route, origin, principal

    async def _record(
        self,
        route: Route,
        request: pb.ProduceRequest,
        origin: Origin,
        reply_topic: str | None,
        correlation: str | None = None,
        idempotency_key: str | None = None,
        principal: Principal | None = None,
    ) -> tuple[Message, str, Any]:
        """The payload checked and the record built (or refused, dead-lettered if the route
        says so), with its correlation id and the parsed JSON document; nothing is produced
        here. An idempotent call's correlation id comes from its key (every attempt carries
        the same one, as over HTTP)."""
        value: bytes | None = None if request.tombstone else request.value
        address = f"grpc:{route.name}"
        document: Any = None
        if value is not None:
            who = principal or ANONYMOUS  # (every caller passes its principal)
            resolve = resolver(origin, address)
            caller = inbound_caller(route, who, self._region(who), request.params, resolve)
            try:
                admitted = admit(route, value, route.content_type, caller)
                document, value = admitted.document, admitted.value
            except TransformFailed as exc:
                await reject_payload(self.producer, route, value, origin, exc, address=address)
                raise status.invalid(
                    "transform-failed",
                    f"the value cannot be made a record of route {route.name}: {exc.detail}",
                    exc.violations,
                ) from exc
            except InvalidPayload as exc:
                await reject_payload(self.producer, route, value, origin, exc, address=address)
                what = "the schema of route " + route.name if route.schema else "strict JSON"
                raise status.invalid(
                    "invalid-payload", f"the value does not match {what}: {exc}", exc.violations
                ) from exc
        if correlation is None:
            correlation = secrets.token_hex(16)
        headers = [(CORRELATION_HEADER, correlation.encode())]
        if reply_topic:
            headers.append((REPLY_TO_HEADER, reply_topic.encode()))
        extra = {"$correlation_id": correlation, "$idempotency_key": idempotency_key}
        try:
            message = build_message(
                route,
                dict(request.params),
                value,
                origin,
                resolver(origin, address, document, extra),
                headers,
            )
        except UnroutableMessage as exc:
            await reject_payload(self.producer, route, value, origin, exc, address=address)
            missing = sorted(_template_parameters(route) - set(request.params))
            raise status.invalid(
                "unroutable",
                f"{exc}: the call lacks a value the route's key or headers need"
                + (f" (params: {', '.join(missing)})" if missing else ""),
                [Violation(f"/params/{p}", "required by the route") for p in missing],
            ) from exc
        return message, correlation, document

    async def _send(
        self, route: Route, message: Message, context: grpc.aio.ServicerContext
    ) -> Produced:
        remaining = context.time_remaining()
        try:
            if remaining is None:
                produced = await self.producer.send(message, route.acks or None)
            else:
                # A deadline shorter than Kafka's own timeout is the caller's to set; the record
                # may still be written after it (as after any timeout, the caller cannot know).
                produced = await asyncio.wait_for(
                    self.producer.send(message, route.acks or None), max(remaining, 0.0)
                )
        except KafkaUnavailable as exc:
            raise status.unavailable(f"Kafka did not take the record: {exc}") from exc
        except TimeoutError:
            raise Refusal(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline",
                "the deadline passed before Kafka acknowledged the record; it may still be written",
            ) from None
        metrics.message_in(route.name, PROTOCOL, len(message.value or b""))
        seen = self._acked.setdefault(produced.topic, {})
        if produced.offset + 1 > seen.get(produced.partition, 0):
            seen[produced.partition] = produced.offset + 1
        return produced

    # -- idempotency-key (protocols/grpc/idempotency.py) ------------------------------------------

    def _idempotency_key(self, route: Route, context: grpc.aio.ServicerContext) -> str | None:
        mode = self.options[route.name].idempotency
        if mode == "off" or self.store is None:
            return None
        try:
            key = parse_key(_metadata(context).get(KEY_METADATA))
        except ValueError as exc:
            raise status.invalid(
                "invalid-idempotency-key",
                str(exc).replace("Idempotency-Key", KEY_METADATA),
                [Violation(f"/metadata/{KEY_METADATA}", str(exc))],
            ) from exc
        if key is None and mode == "required":
            raise status.invalid(
                "idempotency-key-missing",
                f"route {route.name} requires the {KEY_METADATA} metadata",
                [Violation(f"/metadata/{KEY_METADATA}", "required by the route")],
            )
        return key

    async def _produce_once(
        self,
        route: Route,
        request: pb.ProduceRequest,
        origin: Origin,
        principal: Principal,
        key: str,
        method: str,
        raw: bytes,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        """At most one record per (route, identity, key) on any instance: the reply bytes,
        stored and replayed. Only the owner of the key's ledger partition decides; any other
        instance forwards the call to it, as it came."""
        store = self.store
        assert store is not None
        scoped = scope_key(route.name, principal.identity, key)
        message, correlation, document = await self._record(
            route, request, origin, None, correlation_id(scoped), key, principal
        )
        what = "tombstone" if request.tombstone else "produce"
        where_to = method + "?" + json.dumps(sorted(request.params.items()))
        value = b"" if request.tombstone else request.value
        fp = fingerprint(what, where_to, route.content_type, value, document)
        try:
            where = await store.locate(scoped)
        except LedgerUnavailable as exc:
            raise moving(str(exc)) from exc
        if isinstance(where, Remote):
            metadata = list(context.invocation_metadata() or ())
            if self.forwarder is None or any(k == FORWARDED_METADATA for k, _ in metadata):
                raise moving("the owner of this key is changing (a rebalance): retry shortly")
            remaining = context.time_remaining()
            timeout = remaining if remaining is not None else 3 * self.producer.timeout_s
            return await self.forwarder.forward(
                where.address, method, raw, metadata, timeout, context
            )
        if where.entry is not None:
            outcome = verdict(where.entry, fp)
            context.set_trailing_metadata(((REPLAYED_METADATA, "true"),))
            log.info("grpc.idempotent_replay", route=route.name, method=method)
            return outcome
        hints = dict(self._acked.get(message.topic, {}))
        try:
            claimed = await store.claim(where, scoped, fp, message.topic, hints, method)
        except KafkaUnavailable as exc:
            raise status.unavailable(f"the idempotency ledger did not take the key: {exc}") from exc
        ttl_s = self.options[route.name].idempotency_ttl_s
        # The claim's work runs to its end even if the caller goes away: once a record may be
        # in Kafka, only a completion (or a new owner's recovery) may change the key's state.
        work = asyncio.ensure_future(
            self._produce_claimed(route, message, correlation, claimed, method, ttl_s, context)
        )
        return await asyncio.shield(work)

    async def _produce_claimed(
        self,
        route: Route,
        message: Message,
        correlation: str,
        claimed: Claimed,
        method: str,
        ttl_s: float,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        store = self.store
        assert store is not None
        tagged = dataclasses.replace(
            message, headers=(*message.headers, (CLAIM_HEADER, claimed.claim.hex().encode()))
        )
        try:
            produced = await self._send(route, tagged, context)
        except Refusal as refusal:
            if refusal.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # Kafka did not acknowledge, but may have stored the record: the key stays in
                # flight (ABORTED) until a search of the topic says whether it did.
                log.warning("grpc.idempotency_outcome_unknown", route=route.name)
                store.unknown_outcome(claimed)
            else:
                store.release(claimed)
            raise
        except BaseException:
            store.unknown_outcome(claimed)
            raise
        reply = fill_reply(
            self.replies[method](), produced.topic, produced.partition, produced.offset, correlation
        )
        store.complete(claimed, reply, ttl_s)
        return reply

    async def _open(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> tuple[GrpcStream, list[bytes]]:
        route, _, principal = self._admit(request.route, request.params, context, "subscribe")
        options = self.options[route.name]
        params = dict(request.params)
        channel = self._channel(route, params)
        last_id = _metadata(context).get(RESUME_METADATA)
        resume: Position | None = None
        if last_id:
            try:
                resume = Position.decode(last_id, channel.tag)
            except PositionError as exc:
                raise status.invalid(
                    "bad-last-message-id",
                    f"{RESUME_METADATA} is not a position of this route and these params: {exc}",
                    [Violation("/metadata/last-message-id", str(exc))],
                ) from exc
        mode = "resume" if resume is not None else (request.start or options.start)
        if resume is None and mode != options.start and mode not in options.starts():
            raise status.invalid(
                "bad-start",
                f"start={mode!r} is not allowed on route {route.name}; "
                f"use one of: {', '.join(options.starts())}",
                [Violation("/start", "not allowed on this route")],
            )
        stream = GrpcStream(channel, self.max_queued, principal.expires_at)
        try:
            feed = await (
                self.hub.table(route.topic) if mode == "snapshot" else self.hub.feed(route.topic)
            )
            if resume is not None and not another_incarnation(feed, resume):
                await check_reachable(feed, resume)
            # From here to the subscription nothing awaits: no record slips in between.
            project = projector_for(route, principal, self._region(principal))
            start, first = beginning_of(feed, channel, mode, resume, route.after_reset, project)
            stream.subscription = await self.hub.subscribe(
                route.topic,
                through(stream, project),
                start,
                key=channel.key,
                after_reset=route.after_reset,
            )
        except (KafkaUnavailable, UnknownTopic, ValueError, OSError) as exc:
            log.warning("grpc.kafka_unavailable", route=route.name, error=repr(exc))
            raise status.unavailable(f"the route's Kafka topic cannot be read now: {exc}") from exc
        channel.clients += 1
        if mode == "resume":
            metrics.session_resumed(PROTOCOL)
        return stream, first

    def _region(self, principal: Principal) -> str | None:
        config = self.config
        return region_of(principal, config, PROTOCOL) if config is not None else None

    def _channel(self, route: Route, params: Mapping[str, str]) -> Channel:
        name = (route.name, tuple(sorted(params.items())))
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(route, params)
        return channel

    def _release(self, channel: Channel) -> None:
        channel.clients -= 1
        if channel.clients <= 0 and self.channels.get(channel.name) is channel:
            del self.channels[channel.name]

    async def _refuse(
        self, context: grpc.aio.ServicerContext, method: str, route: str, refusal: Refusal
    ) -> None:
        if refusal.kind not in COUNTED_ELSEWHERE:
            metrics.rejected(PROTOCOL, refusal.kind.replace("-", "_"))
        log.info(
            "grpc.refused",
            method=method,
            route=route,
            code=refusal.code.name,
            kind=refusal.kind,
            detail=refusal.detail,
            peer=context.peer(),
        )
        await context.abort_with_status(refusal.status())

    def drop_streams(self) -> None:
        """End every Subscribe (stopping): clients resume by id elsewhere."""
        for stream in list(self.streams):
            stream.ended = True
            stream.close()
            stream.wake.set()


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found[key.lower()] = value
    return found


def _within_deadline(wait_s: float, context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return wait_s if remaining is None else max(0.0, min(wait_s, remaining))


def _template_parameters(route: Route) -> set[str]:
    templates = [*route.headers.values(), *([route.key] if route.key else [])]
    return {p for t in templates for p in t.parameters}
