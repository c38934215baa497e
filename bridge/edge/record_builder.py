"""Building the Kafka record for a message that arrived on a route, the same for every protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.edge.audit import audit_headers, lineage, received_at_text
from bridge.model.config import Route
from bridge.model.message import Headers, Message, Origin, new_message

SourceResolver = Callable[[str], str | None]
# Placeholders that are the same for every record of one address from one sender.
_PER_SENDER = frozenset({"$topic", "$identity", "$client_id"})


class UnroutableMessage(ValueError):
    """The route's key or header templates need something this message does not carry."""


def body_field(document: Any, dotted: str) -> str | None:
    """``{$body.a.b}``: a scalar field of a parsed JSON body, as text."""
    current = document
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    if isinstance(current, (dict, list)) or current is None:
        return None
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def resolver(
    origin: Origin,
    address: str,
    body: Any = None,
    extra: Mapping[str, str | None] | None = None,
) -> SourceResolver:
    """Values for the ``{$...}`` placeholders of a route's templates."""

    def resolve(name: str) -> str | None:
        if name == "$topic":
            return address
        if name == "$identity":
            return origin.principal
        if name == "$client_id":
            return origin.client_id
        if name.startswith("$body."):
            return body_field(body, name[len("$body.") :])
        return (extra or {}).get(name)

    return resolve


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """What every record of one route, one address and one sender shares: the topic, the key,
    the route's headers (and content type) that come first and the audit headers that come
    last. :func:`build_message` makes every record through one, so a front-end that keeps a
    plan for an address its client repeats (MQTT publishers do) builds exactly what
    :func:`build_message` would, without rendering the templates again.

    Reusable for later records only if ``per_record`` is False: a ``{$body...}`` template (or
    an idempotency key, a correlation id) makes the key or headers differ from record to record.
    """

    route: Route
    key: bytes | None
    leading: Headers  # the route's headers, then its content type
    audit: Headers  # the sender's audit headers (received-at as of the plan's origin)
    received_at: int  # index of the received-at header in ``audit`` (-1: none)
    per_record: bool  # a key or header template reads more than the address and the sender
    # ``audit`` around the received-at header, split once: re-stamping is per record
    _audit_before: Headers = ()
    _audit_after: Headers = ()

    def message(
        self,
        value: bytes | None,
        extra_headers: Sequence[tuple[str, bytes]] = (),
        origin: Origin | None = None,
        received_at: float | None = None,
    ) -> Message:
        """The record of ``value``; ``extra_headers`` go between the route's and the audit
        headers; ``received_at`` (epoch seconds) re-stamps the received-at audit header."""
        at = self.received_at
        if received_at is None or at < 0:
            headers = (*self.leading, *extra_headers, *self.audit)
        else:
            stamped = (self.audit[at][0], received_at_text(received_at).encode())
            headers = (
                *self.leading,
                *extra_headers,
                *self._audit_before,
                stamped,
                *self._audit_after,
            )
        return new_message(self.route.topic, self.key, value, headers, origin)


def plan_record(
    route: Route,
    params: Mapping[str, str],
    origin: Origin,
    resolve: SourceResolver,
    audit: bool = True,
    tags: Sequence[tuple[str, bytes]] = (),
) -> RecordPlan:
    """The :class:`RecordPlan` of ``route`` for address ``params`` sent by ``origin``
    (``resolve`` answers the ``{$...}`` placeholders; see :func:`build_message`).

    Raises :class:`UnroutableMessage` if a key or header template cannot be filled.
    """
    key: bytes | None = None
    if route.key is not None:
        rendered = route.key.render(params, resolve)
        if rendered is None:
            raise UnroutableMessage(f"route {route.name}: cannot build key {route.key.source}")
        key = rendered.encode()
    leading: list[tuple[str, bytes]] = []
    for name, template in route.headers.items():
        rendered = template.render(params, resolve)
        if rendered is None:
            raise UnroutableMessage(
                f"route {route.name}: cannot build header {name} = {template.source}"
            )
        leading.append((name, rendered.encode()))
    if route.content_type:
        leading.append(("content-type", route.content_type.encode()))
    leading.extend(tags)  # jurisdiction: the region and rule (bridge.edge.governance.tag_headers)
    if audit:
        audit_part, received_at, before, after = _sender_audit(route, origin)
    else:
        audit_part, received_at, before, after = (), -1, (), ()
    per_record = _per_record(route)
    return RecordPlan(
        route, key, tuple(leading), audit_part, received_at, per_record, before, after
    )


# What a route's records share, per sender (its audit headers, stamped with the time of the
# sender's first record: a record re-stamps it), and per route: plan_record runs once per HTTP
# request, and these cost ~10 us to make again. Keyed by id(route), each entry holding its
# route: while the entry lives, no other route can have that id.
_AuditPart = tuple[Headers, int, Headers, Headers]
_SENDERS: dict[tuple[int, str, str | None, str | None, str | None], tuple[Route, _AuditPart]] = {}
_SENDERS_MAX = 4096  # senders remembered at most (then forgotten all at once)
_PER_RECORD: dict[int, tuple[Route, bool]] = {}


def _sender_audit(route: Route, origin: Origin) -> _AuditPart:
    """The audit headers of ``origin`` on ``route``, the index of their received-at header
    (-1: none) and the headers before and after it (a record re-stamps it)."""
    which = (id(route), origin.protocol, origin.client_id, origin.principal, origin.remote_address)
    cached = _SENDERS.get(which)
    if cached is not None and cached[0] is route:
        return cached[1]
    audit_part = tuple(audit_headers(route.audit, route.name, origin, *lineage(route)))
    received_name = dict(route.audit.headers).get("received_at")
    at = next((i for i, (name, _) in enumerate(audit_part) if name == received_name), -1)
    before, after = (audit_part[:at], audit_part[at + 1 :]) if at >= 0 else ((), ())
    if len(_SENDERS) >= _SENDERS_MAX:
        _SENDERS.clear()
    known = (audit_part, at, before, after)
    _SENDERS[which] = (route, known)
    return known


def _per_record(route: Route) -> bool:
    cached = _PER_RECORD.get(id(route))
    if cached is not None and cached[0] is route:
        return cached[1]
    templates = [*route.headers.values(), *([route.key] if route.key else [])]
    per_record = any(s not in _PER_SENDER for t in templates for s in t.sources)
    _PER_RECORD[id(route)] = (route, per_record)
    return per_record


def build_message(
    route: Route,
    params: Mapping[str, str],
    value: bytes | None,
    origin: Origin,
    resolve: SourceResolver,
    extra_headers: Sequence[tuple[str, bytes]] = (),
    audit: bool = True,
    tags: Sequence[tuple[str, bytes]] = (),
) -> Message:
    """The record for ``value`` arriving on ``route`` with address ``params``.

    Headers: the route's (and its content type), then ``extra_headers``, then the audit headers
    (principal, protocol, client id, remote address, received-at, route; see
    :mod:`bridge.edge.audit`) unless the route switches them off or ``audit`` is False (records the
    bridge writes on its own behalf, such as MQTT session state). Made through
    :func:`plan_record`, the same way a kept plan makes later records.

    Raises :class:`UnroutableMessage` if a key or header template cannot be filled.
    """
    plan = plan_record(route, params, origin, resolve, audit, tags)
    return plan.message(value, extra_headers, origin, origin.received_at)
