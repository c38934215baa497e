"""The SSE front-end: browsers watch Kafka topics as Server-Sent Events.

A request for a route's ``[routes.sse] path`` becomes a hub subscription whose records are sent
as events; each event's id is the stream's Kafka position, so a client resumes exactly (any
instance, after any restart) from ``Last-Event-ID`` with no server-side state.

The handler is mounted as raw ASGI below Quart (``bridge.web.listener.mount``): an event stream needs
no framework, and every framework layer costs per written event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.edge.access import Principal, authorize
from bridge.edge.governance import FilterError, read_decision, region_of, subscriber_filter
from bridge.edge.guard import AuthError
from bridge.edge.transform import Projector, project_all, projector_for, through
from bridge.kafka.hub import Hub, TopicFeed
from bridge.kafka.resets import FROM_START
from bridge.kafka.stream_start import another_incarnation, beginning, reachable
from bridge.model.config import Route, TopicSpec
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.record_filter import RecordFilter
from bridge.process.runtime import Bridge
from bridge.telemetry import metrics
from bridge.web.cors import CorsPolicy, encoded
from bridge.web.problem import token_refused
from bridge.web.server import Exchange
from protocols.sse import encoder
from protocols.sse.channel import Channel
from protocols.sse.options import SseOptions
from protocols.sse.request import StreamRefused, StreamRequest
from protocols.sse.responses import (
    STREAM_HEADERS,
    encode_headers,
    send_empty,
    send_problem,
)
from protocols.sse.stream import CloseReason, EventStream, Flusher, Send

log = structlog.get_logger(__name__)
SSE_METHODS = ("GET", "HEAD", "OPTIONS")  # what a stream's path allows

PROTOCOL = "sse"
SCOPE_MATCH = "edgebridge.sse.match"
FINAL_WRITE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class SseMetrics:
    streams_opened: int = 0
    streams_refused: int = 0
    slow_client_closes: int = 0
    resumed: int = 0
    snapshots: int = 0


class SseFrontend:
    name = "sse"

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.options = {r.name: SseOptions.of(r.sse) for r in bridge.routes.routes if r.sse}
        self.cors = CorsPolicy.of(
            [
                origin
                for listener in (bridge.config.http_listener,)
                if listener is not None
                for origin in listener.options.get("cors_origins", [])
            ]
        )
        self.channels: dict[tuple[str, tuple[tuple[str, str], ...]], Channel] = {}
        self.streams: set[EventStream] = set()
        self.metrics = SseMetrics()
        self.flusher = Flusher()
        beats = [o.heartbeat_s for o in self.options.values() if o.heartbeat_s > 0]
        # One ticker for every stream (heartbeats, token expiry) instead of a timer per client.
        self.tick_s = min(1.0, max(0.05, min(beats, default=1.0)))
        self._ticker: asyncio.Task[None] | None = None

    # -- front-end contract ---------------------------------------------------------------------

    def topics(self) -> list[TopicSpec]:
        return []  # route topics are created by the bridge

    async def start(self) -> None:
        web = self.bridge.web
        if web is None:
            if self.options:
                log.warning("sse.no_http_listener", routes=sorted(self.options))
            return
        _, hub = self.bridge.kafka
        for route in self.bridge.routes.routes:
            if route.sse is not None and self.options[route.name].start == "snapshot":
                hub.tables.add(route.topic)  # its feed keeps the latest value per key
        for route in self.bridge.routes.routes:
            if route.sse is not None:
                # A path shared with an HTTP fetch is the stream's when the client asks for
                # events (Accept), the fetch's otherwise (bridge/web/dispatch.py).
                web.route(
                    f"route {route.name} (sse)",
                    route.sse.template.source,
                    SSE_METHODS,
                    self.handle,
                    media="text/event-stream",
                )
        web.on_stop(self.drop_streams)
        self._ticker = asyncio.create_task(self._tick(), name="sse-ticker")

    async def stop(self) -> None:
        self.drop_streams()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    def drop_streams(self) -> int:
        """End every open stream cleanly; clients reconnect and resume by id."""
        streams = list(self.streams)
        for stream in streams:
            stream.close(CloseReason.DROPPED)
        return len(streams)

    # -- routing --------------------------------------------------------------------------------

    # -- one request ----------------------------------------------------------------------------

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        request = StreamRequest.from_scope(scope)
        origin = request.headers.get("origin")
        if request.method == "OPTIONS":
            await send_empty(
                send,
                204,
                [
                    *encoded(self.cors.preflight_headers(origin, SSE_METHODS)),
                    (b"allow", ", ".join(SSE_METHODS).encode()),
                ],
            )
            return
        match = scope.get(SCOPE_MATCH) or self.bridge.routes.sse.match(request.path)
        try:
            if request.method not in ("GET", "HEAD"):
                raise StreamRefused(
                    405,
                    "method-not-allowed",
                    f"{request.method} is not allowed on an event stream; use GET",
                    {"Allow": "GET, HEAD, OPTIONS"},
                )
            if match is None:
                raise StreamRefused(404, "no-route", f"no event stream at {request.path}")
            stream = await self._open(request, match.target, match.params, "http")
        except StreamRefused as refused:
            self.metrics.streams_refused += 1
            if refused.kind != "invalid-token":  # counted by auth_rejected with its reason
                metrics.rejected(PROTOCOL, refused.kind.replace("-", "_"))
            log.info(
                "sse.refused",
                path=request.path,
                status=refused.status,
                kind=refused.kind,
                detail=refused.detail,
                client=request.client,
            )
            headers = [
                *encoded(self.cors.response_headers(origin)),
                *encode_headers(refused.headers),
            ]
            await send_problem(
                send, refused.status, refused.kind, refused.detail, request.path, headers
            )
            return
        await self._serve(stream, request, receive, send, origin)

    async def _open(
        self, request: StreamRequest, route: Route, params: dict[str, str], listener: str = "http"
    ) -> EventStream:
        """Authorize, work out where the stream starts, and subscribe (nothing sent yet)."""
        principal = self._principal(request)
        denial = authorize(route, "subscribe", principal, params)
        if denial is not None:
            if denial.unauthenticated:
                raise StreamRefused(
                    401, "unauthenticated", denial.reason, {"WWW-Authenticate": "Bearer"}
                )
            raise StreamRefused(403, "forbidden", denial.reason)
        decision = read_decision(route, principal, self.bridge.config, PROTOCOL, listener)
        if decision is not None and not decision.allowed:
            raise StreamRefused(
                451, "unavailable-for-legal-reasons", f"route {route.name}: {decision.reason}"
            )
        try:
            record_filter = subscriber_filter(route, request.query, decision)
        except FilterError as exc:
            raise StreamRefused(400, "bad-filter", str(exc)) from exc
        options = self.options[route.name]
        channel = self._channel(route, params, options)
        resume = request.resume_position(channel.tag)
        mode = self._start_mode(request, options) if resume is None else "resume"
        stream = EventStream(
            channel, principal.expires_at, self._heartbeat_ticks(options), self.flusher
        )
        hub = self._hub()
        try:
            feed = await (hub.table(route.topic) if mode == "snapshot" else hub.feed(route.topic))
            if resume is not None and not another_incarnation(feed, resume):
                await self._check_exists(feed, resume)
            # From here to the subscription nothing awaits, so no record slips in between the
            # position we read and the one we subscribe at.
            region = region_of(principal, self.bridge.config, listener)
            project = projector_for(route, principal, region)
            start, first = self._beginning(
                feed, channel, mode, resume, record_filter, route.after_reset, project
            )
            stream.chunks = [encoder.retry(options.retry_ms), *first]
            stream.subscription = await hub.subscribe(
                route.topic,
                through(stream, project),
                start,
                key=channel.key,
                record_filter=record_filter,
                after_reset=route.after_reset,
            )
        except (KafkaUnavailable, UnknownTopic, ValueError, OSError) as exc:
            log.warning("sse.kafka_unavailable", route=route.name, error=repr(exc))
            raise StreamRefused(
                503,
                "kafka-unavailable",
                f"the stream's Kafka topic cannot be read now: {exc}",
                {"Retry-After": "2"},
            ) from exc
        channel.clients += 1
        self.metrics.streams_opened += 1
        if mode == "resume":
            self.metrics.resumed += 1
            metrics.session_resumed(PROTOCOL)
        elif mode == "snapshot":
            self.metrics.snapshots += 1
        log.debug("sse.opened", route=route.name, params=params, start=mode, client=request.client)
        return stream

    @staticmethod
    async def _check_exists(feed: TopicFeed, resume: Position) -> None:
        """Refuse an id beyond the end of the topic (stream_start.reachable)."""
        if not await reachable(feed, resume, FINAL_WRITE_TIMEOUT_S):
            raise StreamRefused(
                400,
                "bad-last-event-id",
                "Last-Event-ID names offsets beyond the end of this stream's topic "
                "(was Kafka reset?). Reconnect without it to start afresh.",
            )

    def _principal(self, request: StreamRequest) -> Principal:
        try:
            principal: Principal = self.bridge.guard.authenticate(request.token)
        except AuthError as exc:
            refused = token_refused(exc, PROTOCOL)
            raise StreamRefused(
                refused.status, refused.kind, refused.detail, refused.headers
            ) from exc
        return principal

    @staticmethod
    def _start_mode(request: StreamRequest, options: SseOptions) -> str:
        asked = request.query.get("from")
        if asked is None or asked == options.start:
            return options.start
        if asked == "earliest" and options.allow_earliest:
            return "earliest"
        if asked == "live":
            return "live"
        allowed = sorted({options.start, "live", *(["earliest"] if options.allow_earliest else [])})
        raise StreamRefused(
            400,
            "bad-from",
            f"from={asked!r} is not allowed on this stream; use one of: {', '.join(allowed)}",
        )

    @staticmethod
    def _beginning(
        feed: TopicFeed,
        channel: Channel,
        mode: str,
        resume: Position | None,
        record_filter: RecordFilter | None = None,
        after_reset: str = FROM_START,
        project: Projector | None = None,
    ) -> tuple[Mapping[int, int], list[bytes]]:
        """Where the subscription starts (bridge/kafka/stream_start.py's rule), and the events
        sent before its first record. A snapshot's events carry no id of their own: a client
        that drops half-way has none and simply gets a fresh snapshot."""

        def wanted(record: Message) -> bool:
            return (
                (channel.key is None or record.key == channel.key)
                and channel.accepts(record)
                and (record_filter is None or record_filter.matches_record(record))
            )

        begin = beginning(feed, mode, resume, wanted, after_reset)
        first: list[bytes] = []
        if begin.reset is not None:
            assert resume is not None
            log.info("sse.resume_reset", topic=feed.topic, old_epoch=resume.epoch)
            first.append(channel.reset_event(begin.reset, begin.position))
        first.extend(
            channel.render(record, None) for record in project_all(begin.snapshot, project)
        )
        if begin.marker:
            first.append(channel.marker(begin.position))
        return begin.position, first

    def _channel(self, route: Route, params: dict[str, str], options: SseOptions) -> Channel:
        name = (route.name, tuple(sorted(params.items())))
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(route, params, options)
        return channel

    def _release(self, channel: Channel) -> None:
        channel.clients -= 1
        if channel.clients <= 0 and self.channels.get(channel.name) is channel:
            _publish_deliveries(channel)
            del self.channels[channel.name]

    def _heartbeat_ticks(self, options: SseOptions) -> int:
        return max(1, round(options.heartbeat_s / self.tick_s)) if options.heartbeat_s > 0 else 0

    def _hub(self) -> Hub:
        _, hub = self.bridge.kafka
        return hub

    # -- streaming ------------------------------------------------------------------------------

    async def _serve(
        self,
        stream: EventStream,
        request: StreamRequest,
        receive: Any,
        send: Send,
        origin: str | None,
    ) -> None:
        self.streams.add(stream)
        metrics.connection_opened(PROTOCOL)
        stream.task = asyncio.current_task()
        watcher = None
        exchange = getattr(send, "__self__", None)
        if isinstance(exchange, Exchange):
            # Our server tells the departure itself: no task per stream waiting on receive().
            exchange.on_lost = lambda: stream.close(CloseReason.CLIENT_GONE)
        else:
            watcher = asyncio.create_task(_watch_disconnect(receive, stream))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*STREAM_HEADERS, *encoded(self.cors.response_headers(origin))],
                }
            )
            if request.method == "HEAD":
                stream.close(CloseReason.DROPPED)
                stream.chunks = []
            await stream.pump(send)
            if stream.reason != CloseReason.CLIENT_GONE:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if stream.reason != CloseReason.SLOW:
                raise
            # Our own interrupt of a write the client was not reading; end the response if the
            # client lets us, else give up on it (its socket buffers are all it still holds).
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}),
                    FINAL_WRITE_TIMEOUT_S,
                )
        except Exception as exc:  # a write to a connection that is already gone
            log.debug("sse.write_failed", error=repr(exc), client=request.client)
        finally:
            stream.close(CloseReason.CLIENT_GONE)
            if watcher is not None:
                watcher.cancel()
            self.streams.discard(stream)
            metrics.connection_closed(PROTOCOL)
            self._release(stream.channel)
            if stream.reason == CloseReason.SLOW:
                self.metrics.slow_client_closes += 1
                metrics.slow_client_disconnected(PROTOCOL)
                log.warning(
                    "sse.slow_client_closed",
                    route=stream.channel.route.name,
                    client=request.client,
                    buffer_limit=stream.limit,
                    total=self.metrics.slow_client_closes,
                )
            else:
                log.debug("sse.closed", route=stream.channel.route.name, reason=stream.reason)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.time()
            for stream in list(self.streams):
                stream.tick(now)
            self._count_deliveries()

    def _count_deliveries(self) -> None:
        """Deliveries are counted in plain integers on the hot path and published once a tick."""
        for channel in list(self.channels.values()):
            _publish_deliveries(channel)


def _publish_deliveries(channel: Channel) -> None:
    if channel.delivered:
        average = channel.delivered_bytes // channel.delivered
        metrics.message_out(channel.route.name, PROTOCOL, average, channel.delivered)
        channel.delivered = channel.delivered_bytes = 0


async def _watch_disconnect(receive: Any, stream: EventStream) -> None:
    """The only way an ASGI app learns that its client went away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            stream.close(CloseReason.CLIENT_GONE)
            return
