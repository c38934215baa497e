"""What each MCP tool does, against the bridge's core: the hub for reads, the producer for
publishes, the edge (access, strict JSON + JSON Schema, record builder with audit headers) in
between. Every refusal is a :class:`ToolFailure`, which the server turns into an MCP tool error
(``isError``) with a stable ``kind`` and, for bad arguments, the JSON pointers at fault.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.edge import idempotency
from bridge.edge.access import Principal, authorize
from bridge.edge.dead_letters import reject_payload
from bridge.edge.governance import (
    publish_decision,
    read_decision,
    region_of,
    subscriber_filter,
    tag_headers,
)
from bridge.edge.record_builder import UnroutableMessage, build_message, resolver
from bridge.edge.transform import (
    Projector,
    TransformFailed,
    admit,
    inbound_caller,
    projector_for,
    through,
)
from bridge.edge.validation import InvalidPayload, Violation, is_json_type
from bridge.kafka.hub import Hub, Start, TopicFeed
from bridge.kafka.producer import Producer
from bridge.kafka.replies import ReplyFollower
from bridge.kafka.stream_start import another_incarnation, from_start
from bridge.model import strict_json
from bridge.model.config import Config, Route
from bridge.model.errors import KafkaUnavailable, UnknownTopic
from bridge.model.jurisdiction import Decision
from bridge.model.message import Message, Origin
from bridge.model.position import Position, PositionError
from bridge.model.products import request_reply
from bridge.model.record_filter import RecordFilter
from bridge.model.request_reply import (
    CORRELATION_HEADER,
    EXCHANGE_HEADERS,
    REPLY_TO_HEADER,
    reply_status,
)
from bridge.model.route_selection import RouteSelection
from bridge.telemetry import metrics
from protocols.mcp.catalogue import (
    IDEMPOTENCY_ARGUMENT,
    LIMIT_ARGUMENT,
    MAX_READ_LIMIT,
    POSITION_ARGUMENT,
    VALUE_ARGUMENT,
    ToolSpec,
    product_summary,
)
from protocols.mcp.idempotency import Forward, LedgerRefusal, McpLedger, published_document

log = structlog.get_logger(__name__)

PROTOCOL = "mcp"
SCOPE_PRINCIPAL = "edgebridge.mcp.principal"  # where the HTTP layer leaves the caller's principal
READ_TIMEOUT_S = 5.0  # longest a read waits for Kafka before it answers kafka-unavailable


class ToolFailure(Exception):
    """A refused or failed tool call: ``kind`` is a short stable word, ``errors`` the JSON
    pointers of bad arguments."""

    def __init__(self, kind: str, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.errors = errors or []

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.kind, "detail": self.detail}
        if self.errors:
            body["errors"] = self.errors
        return body


def record_value(route: Route, record: Message) -> Any:
    """A record's value as an agent reads it: JSON where the route is JSON (or declares no type
    and the value is strict JSON), else text."""
    if record.value is None:
        return None
    if route.schema is not None or is_json_type(route.content_type):
        try:
            return strict_json.loads(record.value)
        except strict_json.StrictJsonError:
            return {"invalid-record": "not strict JSON; skipped"}
    if route.content_type is None and strict_json.is_strict(record.value):
        return strict_json.loads(record.value)
    return record.value.decode("utf-8", "replace")


def _check_arguments(spec: ToolSpec, arguments: Mapping[str, Any]) -> None:
    allowed = {*spec.params, *((POSITION_ARGUMENT, LIMIT_ARGUMENT) if spec.kind == "read" else ())}
    unknown = sorted(set(arguments) - allowed)
    problems = [{"pointer": "/" + name, "detail": "unknown argument"} for name in unknown]
    for name in spec.params:
        value = arguments.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append({"pointer": "/" + name, "detail": "must be a non-empty string"})
    if problems:
        raise ToolFailure("invalid-arguments", f"bad arguments for {spec.name}", problems)


def _params(spec: ToolSpec, arguments: Mapping[str, Any], principal: Principal) -> dict[str, str]:
    assert spec.route is not None
    params = {name: str(arguments[name]) for name in spec.params if arguments.get(name)}
    bound = spec.route.access.identity
    if bound is not None and principal.identity is not None:
        params[bound] = principal.identity  # never the agent's to choose
    return params


def _authorize(route: Route, action: Any, principal: Principal, params: Mapping[str, str]) -> None:
    denial = authorize(route, action, principal, params)
    if denial is not None:
        raise ToolFailure("forbidden", denial.reason)


@dataclass(slots=True)
class _Collector:
    """A hub subscriber that keeps at most ``limit`` records (it only buffers, as the hub asks)."""

    selection: RouteSelection
    limit: int
    records: list[tuple[Message, Position]] = field(default_factory=list)
    last: Position | None = None  # where a reader is after everything seen (kept or not)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    reset_reason: str | None = None
    region_filter: RecordFilter | None = None  # a local route: the reader's region's records

    def deliver(self, record: Message, position: Position) -> None:
        if self.full.is_set():
            return
        if self.selection.accepts(record) and (
            self.region_filter is None or self.region_filter.matches_record(record)
        ):
            self.records.append((record, position))
            if len(self.records) >= self.limit:
                self.full.set()
        self.last = position

    def reset(self, reason: str, position: Position | None) -> None:
        self.reset_reason = reason
        if position is not None:
            self.last = position


class Operations:
    """The tools' work for one bridge."""

    def __init__(
        self,
        config: Config,
        producer: Producer,
        hub: Hub,
        ledger: McpLedger | None = None,
        listener: str = "",
        followers: Mapping[str, ReplyFollower] | None = None,
    ) -> None:
        self.followers = dict(followers or {})  # reply topic -> its follower (request-reply)
        self.listener = listener  # the listener whose region a caller without a claim has
        self.config = config
        self.producer = producer
        self.hub = hub
        self.ledger = ledger  # idempotency keys of publish tools (None: no route has them)

    # -- products -------------------------------------------------------------------------------

    def list_products(self, tools: list[ToolSpec]) -> dict[str, Any]:
        products: dict[str, dict[str, Any]] = {}
        for spec in tools:
            if spec.route is None:
                continue
            entry = products.setdefault(
                spec.route.name, {**product_summary(self.config, spec.route), "tools": []}
            )
            entry["tools"].append(spec.name)
        return {"products": list(products.values())}

    def describe_product(self, tools: list[ToolSpec], name: Any) -> dict[str, Any]:
        mine = [t for t in tools if t.route is not None and t.route.name == name]
        if not mine:
            # Unknown and forbidden look the same: an agent learns nothing it may not use.
            raise ToolFailure("unknown-product", f"no data product {name!r} that you may use")
        route = mine[0].route
        assert route is not None
        return {
            **product_summary(self.config, route),
            "schema": route.schema,
            "tools": [{"name": t.name, "input_schema": t.input_schema} for t in mine],
        }

    # -- reads ----------------------------------------------------------------------------------

    def _projector(self, route: Route, principal: Principal) -> Projector | None:
        """What ``principal`` sees of ``route``'s records ([[routes.transform.outbound]])."""
        return projector_for(route, principal, region_of(principal, self.config, self.listener))

    async def read_latest(
        self, spec: ToolSpec, arguments: Mapping[str, Any], principal: Principal
    ) -> dict[str, Any]:
        route = spec.route
        assert route is not None and route.key is not None
        _check_arguments(spec, arguments)
        missing = [p for p in spec.params if not arguments.get(p)]
        if missing:
            raise ToolFailure(
                "invalid-arguments",
                f"{spec.name} needs {', '.join(missing)}",
                [{"pointer": "/" + p, "detail": "required"} for p in missing],
            )
        params = _params(spec, arguments, principal)
        _authorize(route, "subscribe", principal, params)
        region_filter = self._region_filter(route, principal)
        key = route.key.render(params)
        assert key is not None
        feed = await self._table(route)
        record = feed.latest.get(key.encode())
        if record is not None and region_filter is not None:
            if not region_filter.matches_record(record):
                record = None  # another region's record: not this reader's to see
        if record is not None and record.value is not None:
            project = self._projector(route, principal)
            if project is not None:
                record = project(record)
                if record is None:
                    raise ToolFailure(
                        "view-unavailable",
                        f"the value of {key!r} in {route.name} cannot be shown in the view "
                        "this caller gets (the product's outbound transform failed on it)",
                    )
        if record is None or record.value is None:
            return {"product": route.name, "key": key, "found": False}
        return {
            "product": route.name,
            "key": key,
            "found": True,
            "value": record_value(route, record),
            "timestamp_ms": record.timestamp_ms,
        }

    async def read_since(
        self, spec: ToolSpec, arguments: Mapping[str, Any], principal: Principal
    ) -> dict[str, Any]:
        route = spec.route
        assert route is not None
        _check_arguments(spec, arguments)
        limit = arguments.get(LIMIT_ARGUMENT, 20)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_READ_LIMIT
        ):
            raise ToolFailure(
                "invalid-arguments",
                f"limit must be an integer from 1 to {MAX_READ_LIMIT}",
                [{"pointer": "/" + LIMIT_ARGUMENT, "detail": f"1..{MAX_READ_LIMIT}"}],
            )
        params = _params(spec, arguments, principal)
        _authorize(route, "subscribe", principal, params)
        region_filter = self._region_filter(route, principal)
        selection = RouteSelection(route, params)
        tag = selection.tag
        given = arguments.get(POSITION_ARGUMENT)
        start: Position | None = None
        if given is not None:
            try:
                start = Position.decode(str(given), tag)
            except PositionError as exc:
                raise ToolFailure(
                    "invalid-position",
                    f"{exc}: pass a next_position returned by {spec.name} with the same "
                    "parameters, or omit it to read from the oldest record",
                    [{"pointer": "/" + POSITION_ARGUMENT, "detail": str(exc)}],
                ) from exc
        collector = _Collector(selection, limit, region_filter=region_filter)
        try:
            feed = await asyncio.wait_for(self.hub.feed(route.topic), READ_TIMEOUT_S)
            if start is not None and another_incarnation(feed, start):
                raise ToolFailure(
                    "stale-position",
                    "the position is from an earlier incarnation of the topic (it was created "
                    "again): omit the position to read the new one from its start",
                    [{"pointer": "/" + POSITION_ARGUMENT, "detail": "another incarnation"}],
                )
            begin: Start | Mapping[int, int] = Start.EARLIEST if start is None else start
            subscription = await self.hub.subscribe(
                route.topic,
                through(collector, self._projector(route, principal)),
                begin,
                key=selection.key,
            )
        except (TimeoutError, KafkaUnavailable, UnknownTopic) as exc:
            raise ToolFailure(
                "kafka-unavailable", f"{route.name} cannot be read now; retry shortly"
            ) from exc
        filled: asyncio.Future[Any] = asyncio.ensure_future(collector.full.wait())
        try:
            # Done when the limit is reached, or when the read has caught up with the live end
            # (everything before it was delivered): bounded either way.
            caught_up = subscription.catch_up
            assert caught_up is not None
            waiting: list[asyncio.Future[Any]] = [filled, caught_up]
            done, _ = await asyncio.wait(
                waiting, timeout=READ_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            filled.cancel()
            subscription.close()
        records = collector.records[:limit]
        if not done and collector.last is None:
            raise ToolFailure(
                "kafka-unavailable", f"{route.name} cannot be read now; retry shortly"
            )
        # Out of time with records read (a long catch-up): what was read, and "more".
        more = collector.full.is_set() or not done
        if collector.full.is_set() and records:
            after = records[-1][1]  # exactly after the last record returned, nothing skipped
        else:
            after = collector.last or _start_position(start, feed)
        return {
            "product": route.name,
            "records": [
                {
                    "key": r.key.decode("utf-8", "replace") if r.key is not None else None,
                    "value": record_value(route, r),
                    "deleted": r.value is None,
                    "timestamp_ms": r.timestamp_ms,
                }
                for r, _ in records
            ],
            "next_position": after.encode(tag),
            "more": more,
            **({"reset": collector.reset_reason} if collector.reset_reason else {}),
        }

    @staticmethod
    def _reply(record: Message) -> dict[str, Any]:
        """A reply record as the agent reads it: the service's status, value and own headers."""
        value: Any = None
        if record.value is not None:
            if strict_json.is_strict(record.value):
                value = strict_json.loads(record.value)
            else:
                value = record.value.decode("utf-8", "replace")
        headers = {
            name: raw.decode("utf-8", "replace")
            for name, raw in record.headers
            if name not in EXCHANGE_HEADERS and not name.startswith("edgebridge-")
        }
        return {"status": reply_status(record), "value": value, "headers": headers}

    @staticmethod
    def _jurisdiction(decision: Decision | None) -> Decision | None:
        if decision is not None and not decision.allowed:
            raise ToolFailure("unavailable-for-legal-reasons", decision.reason)
        return decision

    def _region_filter(self, route: Route, principal: Principal) -> RecordFilter | None:
        """Refuses a reader the route's jurisdiction refuses; for a ``local`` route, the
        condition that keeps only records of the reader's region."""
        decision = self._jurisdiction(
            read_decision(route, principal, self.config, PROTOCOL, self.listener)
        )
        if decision is None or decision.sees is None:
            return None
        return subscriber_filter(route, {}, decision)

    async def _table(self, route: Route) -> TopicFeed:
        try:
            return await asyncio.wait_for(self.hub.table(route.topic), READ_TIMEOUT_S)
        except (TimeoutError, KafkaUnavailable, UnknownTopic) as exc:
            detail = f"{route.name} cannot be read now; retry shortly"
            raise ToolFailure("kafka-unavailable", detail) from exc

    # -- publish --------------------------------------------------------------------------------

    async def publish(
        self,
        spec: ToolSpec,
        arguments: Mapping[str, Any],
        principal: Principal,
        client_id: str | None,
        forward: Forward | None = None,
    ) -> dict[str, Any]:
        """Check, build and produce one record. With an ``idempotency_key`` at most once per
        key (``forward`` reaches the key's owner when another instance decides it)."""
        route = spec.route
        assert route is not None
        key, arguments = _idempotency_key(spec, arguments)
        if spec.wrapped:
            unknown = sorted(set(arguments) - {*spec.params, VALUE_ARGUMENT})
            problems = [{"pointer": "/" + n, "detail": "unknown argument"} for n in unknown]
            problems += [
                {"pointer": "/" + n, "detail": "required: a non-empty string"}
                for n in spec.params
                if not isinstance(arguments.get(n), str) or not arguments.get(n)
            ]
            if VALUE_ARGUMENT not in arguments:
                problems.append({"pointer": "/" + VALUE_ARGUMENT, "detail": "required"})
            if problems:
                raise ToolFailure("invalid-arguments", f"bad arguments for {spec.name}", problems)
            value, prefix = arguments[VALUE_ARGUMENT], "/" + VALUE_ARGUMENT
        else:
            value, prefix = dict(arguments), ""
        params = _params(spec, arguments, principal)
        _authorize(route, "publish", principal, params)  # before anything reaches Kafka
        decision = self._jurisdiction(
            publish_decision(route, principal, self.config, PROTOCOL, self.listener)
        )
        body = self._body(route, value, prefix)
        origin = Origin(PROTOCOL, client_id=client_id, principal=principal.identity)
        document = None
        if route.schema is not None or body is not None:
            region = region_of(principal, self.config, self.listener)
            resolve = resolver(origin, route.name)
            caller = inbound_caller(route, principal, region, params, resolve)
            try:
                admitted = admit(route, body, "application/json", caller)
                document, body = admitted.document, admitted.value
            except TransformFailed as exc:
                await reject_payload(self.producer, route, body, origin, exc, address=route.name)
                raise ToolFailure(
                    "transform-failed",
                    f"the record cannot be made a record of {route.name}: {exc.detail}",
                    [v.as_dict() for v in exc.violations],
                ) from exc
            except InvalidPayload as exc:
                raise ToolFailure(
                    "invalid-payload",
                    f"the record does not match the schema of {route.name}",
                    [_prefixed(v, prefix) for v in exc.violations],
                ) from exc
        raw = body if body is not None else str(value).encode()
        scoped = None
        if key is not None:
            # The same scope and correlation id as HTTP's: a downstream consumer can drop a
            # duplicate by correlation id, whichever way the record came.
            scoped = idempotency.scope_key(route.name, principal.identity, key)
            correlation = idempotency.correlation_id(scoped)
        else:
            correlation = secrets.token_hex(16)
        extra = {"$idempotency_key": key, "$correlation_id": correlation}
        exchange = [(CORRELATION_HEADER, correlation.encode())]
        exchanged = request_reply(route)
        follower = self.followers.get(exchanged.reply_topic) if exchanged is not None else None
        if exchanged is not None:
            exchange.append((REPLY_TO_HEADER, exchanged.reply_topic.encode()))
        try:
            message = build_message(
                route,
                params,
                raw,
                origin,
                resolver(origin, route.name, document, extra),
                exchange,
                tags=tag_headers(decision),  # the region it was produced in, the rule
            )
        except UnroutableMessage as exc:
            raise ToolFailure("unroutable", str(exc)) from exc

        async def produce(message: Message) -> dict[str, Any]:
            # Registered before the request is produced, so a fast reply cannot be missed.
            future = follower.expect(correlation) if follower is not None else None
            try:
                produced = await self.producer.send(message, route.acks)
                metrics.message_in(route.name, PROTOCOL, len(raw))
                result = published_document(
                    route.name, message.key, produced.partition, produced.offset
                )
                if follower is None or future is None or exchanged is None:
                    return result
                # Request-reply: the answer of the service, waited for (bounded) as HTTP does.
                reply = await follower.wait(future, exchanged.wait_s)
                result["correlation_id"] = correlation
                result["reply"] = None if reply is None else self._reply(reply)
                if reply is None:
                    result["reply_pending"] = (
                        f"no reply within {exchanged.wait_s:g} s; the service may still answer"
                    )
                return result
            finally:
                if follower is not None:
                    follower.forget(correlation)

        if scoped is None or self.ledger is None:
            try:
                return await produce(message)
            except KafkaUnavailable as exc:
                raise ToolFailure("kafka-unavailable", "Kafka did not acknowledge; retry") from exc
        # "The same call": the tool, its parameters and the record (canonical JSON, so members
        # in another order are the same record).
        target = spec.name + "?" + strict_json.canonical(params).decode()
        fp = idempotency.fingerprint("MCP", target, route.content_type, raw, document)
        try:
            result, is_error = await self.ledger.once(
                scoped, fp, route.name, message, produce, forward
            )
        except LedgerRefusal as refusal:
            raise ToolFailure(refusal.kind, refusal.detail) from refusal
        except KafkaUnavailable as exc:
            raise ToolFailure(
                "kafka-unavailable",
                "Kafka did not acknowledge; retry with the same idempotency_key",
            ) from exc
        if is_error:  # the owner's refusal, as it answered it
            raise ToolFailure(
                str(result.get("error", "internal")),
                str(result.get("detail", "")),
                list(result.get("errors") or []),
            )
        return result

    def _body(self, route: Route, value: Any, prefix: str) -> bytes | None:
        if route.schema is None and isinstance(value, str):
            return None  # an opaque text record
        bad = _non_finite(value, prefix)
        if bad is not None:
            raise ToolFailure(
                "invalid-payload",
                "numbers must be finite (no NaN or infinity)",
                [{"pointer": bad, "detail": "not a finite number"}],
            )
        return strict_json.dumps(value)


def _idempotency_key(
    spec: ToolSpec, arguments: Mapping[str, Any]
) -> tuple[str | None, Mapping[str, Any]]:
    """The call's idempotency key (checked as HTTP checks its header) and the arguments
    without it. A route without idempotency leaves the argument in (it is then unknown)."""
    if spec.idempotency == "off":
        return None, arguments
    rest = dict(arguments)
    given = rest.pop(IDEMPOTENCY_ARGUMENT, None)
    pointer = "/" + IDEMPOTENCY_ARGUMENT
    if given is None:
        if spec.idempotency == "required":
            raise ToolFailure(
                "invalid-arguments",
                f"{spec.name} requires an {IDEMPOTENCY_ARGUMENT}",
                [{"pointer": pointer, "detail": "required"}],
            )
        return None, rest
    if not isinstance(given, str):
        raise ToolFailure(
            "invalid-arguments",
            f"{IDEMPOTENCY_ARGUMENT} must be a string",
            [{"pointer": pointer, "detail": "must be a string"}],
        )
    try:
        key = idempotency.parse_key(given)
    except ValueError as exc:
        detail = str(exc).replace("Idempotency-Key", IDEMPOTENCY_ARGUMENT)
        raise ToolFailure(
            "invalid-arguments", detail, [{"pointer": pointer, "detail": detail}]
        ) from exc
    return key, rest


def _prefixed(violation: Violation, prefix: str) -> dict[str, str]:
    return {"pointer": prefix + violation.pointer, "detail": violation.message}


def _non_finite(value: Any, pointer: str) -> str | None:
    """The pointer of the first NaN/infinity in an argument (the SDK's JSON parser lets them in)."""
    if isinstance(value, float) and not math.isfinite(value):
        return pointer or "/"
    if isinstance(value, dict):
        for name, item in value.items():
            found = _non_finite(
                item, f"{pointer}/{str(name).replace('~', '~0').replace('/', '~1')}"
            )
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{pointer}/{index}")
            if found is not None:
                return found
    return None


def _start_position(start: Position | None, feed: TopicFeed) -> Position:
    return start if start is not None else from_start(feed)


class RateLimiter:
    """A token bucket per identity (per client for anonymous callers): ``rate`` calls a second
    on average, ``burst`` at once. Bounded: the least recently seen callers are forgotten."""

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_callers = max_callers
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, caller: str, now: float | None = None) -> float:
        """0 if the call may go ahead, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[caller] = (tokens, now)  # re-inserted: the dict is in recency order
        if len(self._buckets) > self.max_callers:
            del self._buckets[next(iter(self._buckets))]
        return wait
