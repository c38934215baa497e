"""Route transformations at the edge, the same for every protocol (issue 16 items 1 and 2).

* :func:`admit`: what a sender's payload becomes before it is produced. Without an inbound
  transform, the payload checked against the route's schema, unchanged. With one: the payload
  checked against the transform's source schema, the expression's result encoded as JSON and
  checked against the route's (canonical) schema. Raises :class:`InvalidPayload` (the sender's
  payload breaks the source schema or is not strict JSON) or :class:`TransformFailed` (the
  expression cannot make a valid canonical record of it); the front-end answers in its
  protocol and dead-letters the payload (bridge/edge/dead_letters.py).
* :func:`projector_for`: what one subscriber sees of a route's records
  (``[[routes.transform.outbound]]``), a function from a record to the record it receives.

Expressions are compiled once when routing.toml is loaded (bridge/model/transforms.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.edge.access import Principal
from bridge.edge.validation import (
    InvalidPayload,
    Violation,
    check_document,
    parse_strict,
    validate_payload,
)
from bridge.model.config import ANONYMOUS_ROLE, AUTHENTICATED_ROLE, Route
from bridge.model.message import Message
from bridge.model.transforms import Expression, Projection
from bridge.telemetry.metrics import transform_failed

log = structlog.get_logger(__name__)

MASK = "***"  # what a masked field's value becomes
CALLER_VARIABLES = frozenset({"identity", "claims", "roles", "region"})


class TransformFailed(ValueError):
    """The route's expression could not make a valid canonical record of a payload."""

    reason = "transform"  # the dead letter's edgebridge-dlq-reason

    def __init__(self, route: str, detail: str, violations: list[Violation] | None = None) -> None:
        self.route = route
        self.detail = detail
        self.violations = violations or []
        super().__init__(f"route {route}: {detail}")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent (or reads) a record, and through which address: what an expression reads
    besides the record itself."""

    params: Mapping[str, str] = field(default_factory=dict)
    identity: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    roles: frozenset[str] = frozenset()
    region: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # inbound: the protocol's own
    key: str | None = None  # inbound: the record's key when it does not depend on the body

    @classmethod
    def of(
        cls,
        principal: Principal,
        region: str | None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
    ) -> Caller:
        return cls(
            params or {},
            principal.identity,
            principal.claims,
            principal.roles,
            region,
            headers or {},
            key,
        )


NOBODY = Caller()

# Never handed to an expression: a transform must not be able to copy a credential into a record.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def visible_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A protocol's headers as an expression reads them: last value per lower-case name,
    credentials left out."""
    return {k.lower(): v for k, v in pairs if k.lower() not in SECRET_HEADERS}


def key_before_body(
    route: Route, params: Mapping[str, str], resolve: Callable[[str], str | None]
) -> str | None:
    """The record's key as the inbound expression sees it: the route's key template rendered
    from the address and the sender (``resolve``: bridge.edge.record_builder.resolver), or None
    when the template reads the body (the key is made from the canonical record, after) or
    cannot be filled."""
    template = route.key
    if template is None or any(s.startswith("$body.") for s in template.sources):
        return None
    return template.render(params, resolve)


def inbound_caller(
    route: Route,
    principal: Principal,
    region: str | None,
    params: Mapping[str, str],
    resolve: Callable[[str], str | None],
    headers: Iterable[tuple[str, str]] = (),
) -> Caller:
    """What ``route``'s inbound transform reads besides the payload, for one sender (NOBODY
    when it reads only the payload, so a door gathers nothing per message for it)."""
    if not wants_caller(route):
        return NOBODY
    key = key_before_body(route, params, resolve)
    return Caller.of(principal, region, params, visible_headers(headers), key)


def wants_caller(route: Route) -> bool:
    """Whether ``route``'s inbound transform reads more than the payload (so the front-end
    gathers the caller's headers, parameters, claims and region for it)."""
    transform = route.transform
    inbound = transform.inbound if transform is not None else None
    return inbound is not None and inbound.reads != frozenset({"body"})


@dataclass(frozen=True, slots=True)
class Admitted:
    """A payload the route accepts: its parsed JSON (None: opaque bytes) and the bytes to
    produce (the canonical record's when a transform made it)."""

    document: Any
    value: bytes | None


def admit(
    route: Route, value: bytes | None, content_type: str | None, caller: Caller = NOBODY
) -> Admitted:
    """The payload ``value`` sent to ``route``, checked and transformed (see the module)."""
    transform = route.transform
    inbound = transform.inbound if transform is not None else None
    if inbound is None or value is None:  # (None: a tombstone, nothing to transform)
        return Admitted(validate_payload(route, value, content_type), value)
    assert transform is not None
    source = parse_strict(value)
    if transform.source_schema is not None:
        check_document(transform.source_schema, source)
    result = _evaluate(route.name, inbound, source, caller)
    encoded = _encode(route.name, result)
    if route.schema is not None:
        try:
            check_document(route.schema, result)
        except InvalidPayload as exc:
            raise TransformFailed(
                route.name,
                "the transformed record does not match the route's schema: " + str(exc),
                exc.violations,
            ) from None
    return Admitted(result, encoded)


def _evaluate(route: str, expression: Expression, body: Any, caller: Caller) -> Any:
    context: dict[str, Any] = {}
    for name in expression.reads:  # only what it reads: each variable costs a conversion
        context[name] = body if name == "body" else _caller_value(caller, name)
    fields = expression.body_fields
    if fields is not None and type(body) is dict:
        context["body"] = {name: body[name] for name in fields if name in body}
    try:
        return expression.program.execute(context)
    except KeyError as exc:
        # (a map the expression reads lacks a member: the body's, or the headers', params'...)
        raise TransformFailed(
            route, f"no field {exc.args[0]!r} where the expression reads it"
        ) from None
    except (TypeError, ValueError, RuntimeError, ArithmeticError, OverflowError) as exc:
        # CEL's own words, with its advice ("Convert explicitly with double(x)..."), bounded.
        raise TransformFailed(route, str(exc)[:400]) from None


def _caller_value(caller: Caller, name: str) -> Any:
    if name == "roles":
        return sorted(caller.roles)
    if name == "params":
        return dict(caller.params)
    if name == "headers":
        return dict(caller.headers)
    if name == "claims":
        return dict(caller.claims)
    return getattr(caller, name)


def _encode(route: str, result: Any) -> bytes:
    """The expression's result as JSON; every number finite (money never NaN or infinite)."""
    try:
        return _ENCODER.encode(result).encode()
    except ValueError:
        where = _non_finite(result, "") or "/"
        raise TransformFailed(
            route, f"the transform made a number that is not finite at {where}"
        ) from None
    except TypeError as exc:
        raise TransformFailed(
            route, f"the transform made a value JSON cannot carry: {exc}"
        ) from None


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime):  # CEL timestamp(): RFC 3339
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.timedelta):  # CEL duration(): seconds
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON")


# Made once (json.dumps with options builds an encoder per call).
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_plain
)


def _non_finite(value: Any, pointer: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return pointer or "/"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for name, item in items:
        token = str(name).replace("~", "~0").replace("/", "~1")
        found = _non_finite(item, f"{pointer}/{token}")
        if found is not None:
            return found
    return None


# -- outbound: per-audience projections ------------------------------------------------------

Projector = Callable[[Message], Message | None]


def projection_for(route: Route, principal: Principal) -> Projection | None:
    """The first ``[[routes.transform.outbound]]`` naming one of the subscriber's roles
    (``anonymous``: anyone; ``authenticated``: any verified token); None: the whole record."""
    transform = route.transform
    if transform is None or not transform.outbound:
        return None
    for projection in transform.outbound:
        roles = projection.roles
        if (
            ANONYMOUS_ROLE in roles
            or (AUTHENTICATED_ROLE in roles and principal.authenticated)
            or not roles.isdisjoint(principal.roles)
        ):
            return projection
    return None


def projector_for(
    route: Route, principal: Principal, region: str | None = None
) -> Projector | None:
    """What ``principal`` receives of each record of ``route``: a function from the record to
    the record delivered (None from it: withheld, see :class:`_Projector`), or None when it
    receives records whole. A projection that does not read the caller is shared by everyone
    it applies to, so it runs once per record, not once per subscriber."""
    projection = projection_for(route, principal)
    if projection is None or _whole(projection):
        return None
    expression = projection.expression
    if expression is not None and not expression.reads.isdisjoint(CALLER_VARIABLES):
        return _Projector(route, projection, Caller.of(principal, region))
    shared = _SHARED.get(projection)
    if shared is None:
        shared = _SHARED[projection] = _Projector(route, projection, NOBODY)
    return shared


def _whole(projection: Projection) -> bool:
    return projection.expression is None and not projection.remove and not projection.mask


_SHARED: dict[Projection, _Projector] = {}


class _Projector:
    """Applies one projection; remembers its last record, since a record reaches every
    subscriber of a feed one after the other.

    A record it cannot project (its value is not JSON, the expression fails) is withheld from
    the subscriber (logged and counted as ``edgebridge_transform_failures``): a view that hides
    a field must never fall back to the whole record. Its position still advances, as with a
    filtered-out record. Tombstones pass unchanged: they carry nothing to hide."""

    __slots__ = ("_last_in", "_last_out", "caller", "projection", "route")

    def __init__(self, route: Route, projection: Projection, caller: Caller) -> None:
        self.route = route
        self.projection = projection
        self.caller = caller
        self._last_in: Message | None = None
        self._last_out: Message | None = None

    def __call__(self, record: Message) -> Message | None:
        if record is self._last_in:
            return self._last_out
        out = self._project(record)
        self._last_in, self._last_out = record, out
        return out

    def _project(self, record: Message) -> Message | None:
        if record.value is None:
            return record
        projection = self.projection
        try:
            document = json.loads(record.value)
            if projection.expression is not None:
                document = _evaluate(
                    self.route.name, projection.expression, document, self._reader(record)
                )
            for pointer in projection.remove:
                _edit(document, pointer, None)
            for pointer in projection.mask:
                _edit(document, pointer, MASK)
            value = _encode(self.route.name, document)
        except (ValueError, TransformFailed) as exc:
            log.warning(
                "transform.outbound_withheld",
                route=self.route.name,
                projection=projection.index,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            transform_failed(self.route.name, "outbound")
            return None
        return dataclasses.replace(record, value=value)

    def _reader(self, record: Message) -> Caller:
        caller = self.caller
        headers = {name: raw.decode("utf-8", "replace") for name, raw in record.headers}
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        params = self.route.params_from_record(record.key, record.headers) or {}
        return Caller(
            params, caller.identity, caller.claims, caller.roles, caller.region, headers, key
        )


def _edit(document: Any, tokens: tuple[str, ...], mask: str | None) -> None:
    """Remove (``mask`` None) or mask the field at ``tokens``; a field that is not there is
    left alone (nothing to hide)."""
    parent = document
    for token in tokens[:-1]:
        parent = _child(parent, token)
        if parent is None:
            return
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        if mask is None:
            del parent[last]
        else:
            parent[last] = mask
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        if mask is None:
            del parent[int(last)]
        else:
            parent[int(last)] = mask


def _child(value: Any, token: str) -> Any:
    if isinstance(value, dict):
        return value.get(token)
    if isinstance(value, list) and token.isdigit() and int(token) < len(value):
        return value[int(token)]
    return None


class Projected:
    """A hub subscriber that receives its records through a projector (see
    :func:`projector_for`); a withheld record is not delivered, its position still passes."""

    __slots__ = ("inner", "project", "reset")

    def __init__(self, inner: Any, project: Projector) -> None:
        self.inner = inner
        self.project = project
        reset = getattr(inner, "reset", None)
        if reset is not None:  # the hub looks for it: only a resettable inner one has it
            self.reset = reset

    def deliver(self, record: Message, position: Any) -> None:
        out = self.project(record)
        if out is not None:
            self.inner.deliver(out, position)


def through(subscriber: Any, project: Projector | None) -> Any:
    """``subscriber``, or it behind ``project`` when the subscriber has a view."""
    return subscriber if project is None else Projected(subscriber, project)


def project_all(records: Iterable[Message], project: Projector | None) -> list[Message]:
    """A snapshot's records as a subscriber with ``project`` sees them (withheld ones left out)."""
    if project is None:
        return list(records)
    return [out for record in records if (out := project(record)) is not None]
