"""The HTTP front-end (issue 4): produce, idempotent retries, request-reply and fetch over HTTP.

It is mounted as a raw ASGI handler on the shared listener (``bridge.web.listener``) for the paths of
HTTP routes and for reply locations; every other path falls through to Quart, whose 404/405
this module turns into ``application/problem+json``. ``GET`` requests that ask for
``text/event-stream`` are left to the SSE front-end even on a path both serve, and so is every
``GET`` of a path whose only GET is an event stream (a POST route there does not make it ours).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

import structlog
from quart import Response as QuartResponse
from werkzeug.exceptions import HTTPException

from bridge.edge.access import Principal, authorize
from bridge.edge.credentials import www_authenticate
from bridge.edge.governance import Decision, publish_decision, read_decision, region_of, tag_headers
from bridge.edge.transform import projector_for
from bridge.kafka.replies import ReplyFollower
from bridge.model.advertise import advertised_address
from bridge.model.config import Route, TopicSpec
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Message
from bridge.model.position import Position, PositionError, stream_tag
from bridge.model.request_reply import CORRELATION_HEADER
from bridge.model.routing import HttpTarget, Match
from bridge.process.runtime import Bridge
from bridge.telemetry import metrics
from bridge.web.cors import CorsPolicy
from bridge.web.direct import DirectRequest, Responder
from bridge.web.listener import WebListener
from bridge.web.problem import PROBLEM_TYPE, Problem, authenticate
from protocols.http.asgi import (
    BODY_TIMEOUT_S,
    ClientGone,
    Receive,
    Request,
    Response,
    Send,
    send_response,
)
from protocols.http.fetch import FetchHandler
from protocols.http.forwarding import Forwarder
from protocols.http.idempotency import (
    DEFAULT_PARTITIONS,
    DEFAULT_TOPIC,
    IdempotencyStore,
    encode_response,
    recovered_response,
)
from protocols.http.options import DEFAULT_TTL_S, HttpOptions
from protocols.http.prefer import parse_prefer
from protocols.http.produce import REPLIES_PREFIX, ProduceCall, ProduceHandler, reply_location
from protocols.http.replies import reply_response

log = structlog.get_logger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 6000
PROTOCOL = "http"
# Refusals the core counts itself: payload rejections (dead_letter) and refused tokens.
COUNTED_ELSEWHERE = {"invalid-payload", "unroutable", "invalid-token"}


class HttpFrontend:
    name = "http"

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.routes = bridge.routes
        listener = bridge.config.http_listener
        listener_options = listener.options if listener is not None else {}
        self.listener_options = listener_options
        self.cors = CorsPolicy.of(listener_options.get("cors_origins"))
        self.listener_options = dict(listener_options)
        # Its own per deployment when two share a cluster: the ledger's consumer group is named
        # after it, and members of one group forward requests to each other.
        self.idempotency_topic = str(listener_options.get("idempotency_topic", DEFAULT_TOPIC))
        self.options: dict[int, HttpOptions] = {
            id(binding): HttpOptions.of(binding)
            for route in self.routes.routes
            for binding in route.http
        }
        self.store: IdempotencyStore | None = None
        self.forwarder: Forwarder | None = None
        self.followers: dict[str, ReplyFollower] = {}
        self.produce: ProduceHandler | None = None
        self.fetch: FetchHandler | None = None
        # Decided once at start: a disabled log.debug still costs a logger bind per call.
        self.debug = False

    # -- front-end contract -------------------------------------------------------------------

    def topics(self) -> list[TopicSpec]:
        # compact: the newest state per key; delete: records older than every route's expiry
        # (plus the longest lease) can go, as nothing they say still decides anything.
        ttl_s = max((o.idempotency_ttl_s for o in self.options.values()), default=DEFAULT_TTL_S)
        retention_ms = int((ttl_s + 3600) * 1000)
        config = {"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)}
        partitions = int(self.listener_options.get("idempotency_partitions", DEFAULT_PARTITIONS))
        specs = [TopicSpec(self.idempotency_topic, partitions, 1, True, config)]
        specs += [TopicSpec(topic) for topic in sorted(self._reply_topics())]
        return specs

    def _reply_topics(self) -> set[str]:
        return {o.reply_topic for o in self.options.values() if o.reply_topic}

    async def start(self) -> None:
        if self.bridge.web is None or not self.options:
            log.info(
                "http.disabled",
                reason="no listener" if self.bridge.web is None else "no HTTP routes",
            )
            return
        producer, hub = self.bridge.kafka
        self.debug = log.is_enabled_for(logging.DEBUG)
        for route in self.routes.routes:
            if any(self.options[id(b)].method == "GET" for b in route.http):
                hub.tables.add(route.topic)  # fetch reads the latest value per key
        self.forwarder = Forwarder(self.advertised_address())
        ttl_s = max((o.idempotency_ttl_s for o in self.options.values()), default=DEFAULT_TTL_S)
        self.store = IdempotencyStore(
            producer,
            self.bridge.config.kafka,
            self.bridge.bootstrap,
            self.forwarder.address,
            _rebuild,
            self.idempotency_topic,
            session_timeout_ms=int(
                self.listener_options.get(
                    "idempotency_session_timeout_ms", DEFAULT_SESSION_TIMEOUT_MS
                )
            ),
            ttl_s=ttl_s,
        )
        if any(o.idempotency != "off" for o in self.options.values()):
            await self.store.start()
        for topic in sorted(self._reply_topics()):
            follower = ReplyFollower(hub, topic)
            await follower.start()
            self.followers[topic] = follower
        self.produce = ProduceHandler(
            producer,
            self.store,
            self.followers,
            self.debug,
            self.forwarder,
            body_timeout_s=float(self.listener_options.get("body_timeout_s", BODY_TIMEOUT_S)),
        )
        self.fetch = FetchHandler(hub, producer.timeout_s)
        self._register(self.bridge.web)
        self._install_fallbacks(self.bridge.web.app)
        log.info("http.started", routes=len(self.options), reply_topics=sorted(self.followers))

    async def stop(self) -> None:
        for follower in self.followers.values():
            follower.stop()
        if self.store is not None:
            await self.store.stop()
        if self.forwarder is not None:
            await self.forwarder.close()

    def advertised_address(self) -> str:
        """host:port other instances forward requests to (``[listeners.http] advertise``)."""
        web = self.bridge.web
        assert web is not None
        advertise = str(self.listener_options.get("advertise") or "")
        return advertised_address(advertise, web.settings.host, web.peer_port)

    # -- dispatch -----------------------------------------------------------------------------

    def _register(self, web: WebListener) -> None:
        """Every HTTP route's path in the listener's dispatch table, once per path with all the
        methods its routes take (a GET fetch also answers HEAD), and the reply long-polls."""
        paths: dict[tuple[tuple[str, str], ...], tuple[str, list[str], list[str]]] = {}
        for route in self.routes.routes:
            for binding in route.http:
                method = self.options[id(binding)].method
                source, methods, names = paths.setdefault(
                    binding.template.shape, (binding.template.source, [], [])
                )
                methods += [method, "HEAD"] if method == "GET" else [method]
                names.append(route.name)
        for source, methods, names in paths.values():
            owner = f"route {', '.join(dict.fromkeys(names))} (http)"
            web.route(owner, source, [*dict.fromkeys(methods), "OPTIONS"], self, direct=self.direct)
        web.route("HTTP replies", REPLIES_PREFIX + "{reply...}", ("GET", "OPTIONS"), self)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        request = Request.from_scope(scope, receive)
        started = time.perf_counter()
        try:
            response = await self._respond(request)
        except ClientGone:
            log.info(
                "http.client_gone", method=request.method, path=request.path, client=request.client
            )
            return
        except Exception as exc:
            response = self._refused(request, exc)
        await send_response(send, response, self._cors(request, response))
        self._done(request, response, started)

    def direct(self, raw: DirectRequest, responder: Responder) -> bool:
        """A produce whose body the server read whole (bridge/web/direct.py): answered from
        Kafka's acknowledgement, without ASGI or a task. Everything else (fetch, replies,
        OPTIONS, routes that wait for a reply) is declined and goes through ``__call__``."""
        head = raw.head
        if head.path.startswith(REPLIES_PREFIX):
            return False
        match, _ = self.routes.http_match(head.method, head.path)
        if match is None:
            return False
        options = self.options[id(match.target.binding)]
        if options.method == "GET" or options.reply_topic:
            return False
        request = Request.from_direct(raw)
        started = time.perf_counter()
        try:
            outcome = self._produce_now(request, match)
        except Exception as exc:
            outcome = self._refused(request, exc)
        if isinstance(outcome, Response):
            self._answer(request, responder, started, outcome)
        else:
            outcome.add_done_callback(partial(self._answer_later, request, responder, started))
        return True

    def _answer_later(
        self,
        request: Request,
        responder: Responder,
        started: float,
        outcome: asyncio.Future[Response],
    ) -> None:
        try:
            if outcome.cancelled():
                response = self._refused(request, asyncio.CancelledError())
            else:
                error = outcome.exception()
                response = outcome.result() if error is None else self._refused(request, error)
            self._answer(request, responder, started, response)
        except Exception:  # a bug here must not leave the client waiting for ever
            log.exception("http.answer_failed", method=request.method, path=request.path)
            problem = Problem(500, "internal", "the bridge failed on this request")
            responder.respond(500, [("content-type", PROBLEM_TYPE)], problem.body(request.path))

    def _answer(
        self, request: Request, responder: Responder, started: float, response: Response
    ) -> None:
        headers = response.headers
        cors = self._cors(request, response)
        responder.respond(response.status, [*headers, *cors] if cors else headers, response.body)
        self._done(request, response, started)

    def _cors(self, request: Request, response: Response) -> list[tuple[str, str]]:
        if response.header("access-control-allow-origin"):
            return []
        return self.cors.response_headers(request.header("origin"))

    def _done(self, request: Request, response: Response, started: float) -> None:
        if self.debug:
            log.debug(
                "http.request",
                method=request.method,
                path=request.path,
                status=response.status,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )

    def _refused(self, request: Request, error: BaseException) -> Response:
        """The response to a request that raised ``error``: its problem document, logged."""
        if isinstance(error, KafkaUnavailable):
            error = Problem(
                503, "kafka-unavailable", f"Kafka: {error}", headers={"retry-after": "2"}
            )
        elif isinstance(error, UnknownTopic):
            error = Problem(
                503,
                "unknown-topic",
                f"Kafka topic {error} does not exist",
                headers={"retry-after": "5"},
            )
        if not isinstance(error, Problem):
            log.error(
                "http.failed",
                method=request.method,
                path=request.path,
                exc_info=(type(error), error, error.__traceback__),
            )
            error = Problem(500, "internal", "the bridge failed on this request")
        elif error.kind not in COUNTED_ELSEWHERE:
            metrics.rejected(PROTOCOL, error.kind.replace("-", "_"))
        if error.status != 500:
            log.info(
                "http.refused",
                method=request.method,
                path=request.path,
                status=error.status,
                problem=error.kind,
                detail=error.detail,
                client=request.client,
            )
        return Response.problem(error, request.path)

    async def _respond(self, request: Request) -> Response:
        if request.path.startswith(REPLIES_PREFIX):
            return await self._reply(request)
        match, allowed = self.routes.http_match(request.method, request.path)
        methods = sorted(allowed | ({"GET"} if self.routes.sse.match(request.path) else set()))
        if request.method == "OPTIONS":
            headers = [("allow", ", ".join([*methods, "OPTIONS"]))]
            headers += self.cors.preflight_headers(request.header("origin"), [*methods, "OPTIONS"])
            return Response(204, headers)
        if match is None:
            raise Problem(
                405,
                "method-not-allowed",
                f"{request.method} is not allowed on {request.path}",
                headers={"allow": ", ".join([*methods, "OPTIONS"])},
            )
        return await self._route(request, match)

    def _admitted(
        self, request: Request, match: Match[HttpTarget]
    ) -> tuple[Route, HttpOptions, Principal, Decision | None]:
        """Who asks, and whether the route lets them (401/403/451 as Problems)."""
        route, options = match.target.route, self.options[id(match.target.binding)]
        principal = self._principal(request)
        action = "subscribe" if options.method == "GET" else "publish"
        _authorize(route, action, principal, match.params)
        decide = publish_decision if action == "publish" else read_decision
        decision = decide(route, principal, self.bridge.config, PROTOCOL)
        if decision is not None and not decision.allowed:
            raise Problem(
                451,
                "unavailable-for-legal-reasons",
                f"route {route.name}: {decision.reason}",
                rule=decision.rule,
                region=decision.region,
            )
        return route, options, principal, decision

    async def _route(self, request: Request, match: Match[HttpTarget]) -> Response:
        route, options, principal, decision = self._admitted(request, match)
        if options.method == "GET":
            assert self.fetch is not None
            project = projector_for(
                route, principal, region_of(principal, self.bridge.config, PROTOCOL)
            )
            return await self.fetch.handle(request, route, options, match.params, decision, project)
        assert self.produce is not None
        return await self.produce.handle(self._call(request, match, principal, decision))

    def _produce_now(
        self, request: Request, match: Match[HttpTarget]
    ) -> Response | asyncio.Future[Response]:
        _, _, principal, decision = self._admitted(request, match)
        assert self.produce is not None
        return self.produce.handle_now(self._call(request, match, principal, decision))

    def _call(
        self,
        request: Request,
        match: Match[HttpTarget],
        principal: Principal,
        decision: Decision | None,
    ) -> ProduceCall:
        route = match.target.route
        # The caller's region only for a route whose transform may read it.
        region = (
            None if route.transform is None else region_of(principal, self.bridge.config, PROTOCOL)
        )
        options = self.options[id(match.target.binding)]
        return ProduceCall(
            request, route, options, match.params, principal, tag_headers(decision), region
        )

    async def _reply(self, request: Request) -> Response:
        """GET on a ``Location`` from a 202: the reply once it exists (long-poll with wait=N)."""
        if request.method not in ("GET", "OPTIONS"):
            raise Problem(
                405,
                "method-not-allowed",
                "reply locations only answer GET",
                headers={"allow": "GET, OPTIONS"},
            )
        if request.method == "OPTIONS":
            return Response(
                204,
                [
                    ("allow", "GET, OPTIONS"),
                    *self.cors.preflight_headers(request.header("origin"), ["GET", "OPTIONS"]),
                ],
            )
        route_name, _, correlation = request.path[len(REPLIES_PREFIX) :].partition("/")
        route = self.routes.by_name.get(route_name)
        binding = (
            next((b for b in route.http if self.options[id(b)].reply_topic), None)
            if route
            else None
        )
        if route is None or binding is None or not correlation:
            raise Problem(404, "unknown-reply", "no such reply location")
        options = self.options[id(binding)]
        try:
            after = Position.decode(
                request.query.get("after", [""])[0], stream_tag(route.name, correlation)
            )
        except PositionError as exc:
            raise Problem(
                404, "unknown-reply", f"not a reply location of this bridge: {exc}"
            ) from exc
        _authorize(route, "publish", self._principal(request), {})
        assert options.reply_topic is not None
        follower = self.followers[options.reply_topic]
        if after.epoch and follower.epoch and after.epoch != follower.epoch:
            # Its offsets belong to a reply topic that has since been recreated: whatever reply
            # there was is not in the new one. Gone, never "pending" forever or a wrong match.
            raise Problem(
                410,
                "reply-location-gone",
                "the reply topic was created again since this Location was handed out, so its "
                "reply is lost; send the request again (with the same Idempotency-Key, if any)",
            )
        wait = parse_prefer(request.header_values("prefer")).wait(0.0, options.wait_max_s)
        reply = await follower.find(correlation, after, wait)
        if reply is not None:
            metrics.message_out(route.name, PROTOCOL, len(reply.value or b""))
            return reply_response(reply)
        location = reply_location(route, correlation, after)
        return Response.json(
            202, b'{"status":"pending"}', [("location", location), ("retry-after", "1")]
        )

    def _principal(self, request: Request) -> Principal:
        """The caller: ``Authorization: Bearer`` or ``access_token`` (bridge.credentials)."""
        return authenticate(
            self.bridge.guard, request.header("authorization"), request.query_string, PROTOCOL
        )

    # -- what Quart answers for paths nobody serves -------------------------------------------

    def _install_fallbacks(self, app: Any) -> None:
        async def problem(error: HTTPException) -> QuartResponse:
            status = error.code or 500
            kind = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
            detail = {404: "no route serves this path"}.get(status, error.description or "")
            headers = {"content-type": PROBLEM_TYPE}
            if status == 405 and getattr(error, "valid_methods", None):
                headers["allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
            return QuartResponse(
                Problem(status, kind, detail).body(), status=status, headers=headers
            )

        app.register_error_handler(404, problem)
        app.register_error_handler(405, problem)


def _rebuild(record: Message, recipe: str) -> bytes:
    correlation = (record.header(CORRELATION_HEADER) or b"").decode(errors="replace")
    return encode_response(recovered_response(record, correlation, recipe))


def _authorize(route: Any, action: Any, principal: Principal, params: dict[str, str]) -> None:
    denial = authorize(route, action, principal, params)
    if denial is None:
        return
    if denial.unauthenticated:
        raise Problem(
            401, "unauthenticated", denial.reason, headers={"www-authenticate": www_authenticate()}
        )
    raise Problem(403, "forbidden", denial.reason)
