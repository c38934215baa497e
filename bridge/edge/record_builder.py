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
    audit_part: Headers = ()
    received_at = -1
    if audit:
        audit_part = tuple(audit_headers(route.audit, route.name, origin, *lineage(route)))
        received_name = dict(route.audit.headers).get("received_at")
        received_at = next(
            (i for i, (name, _) in enumerate(audit_part) if name == received_name), -1
        )
    templates = [*route.headers.values(), *([route.key] if route.key else [])]
    per_record = any(s not in _PER_SENDER for t in templates for s in t.sources)
    before, after = (
        (audit_part[:received_at], audit_part[received_at + 1 :]) if received_at >= 0 else ((), ())
    )
    return RecordPlan(
        route, key, tuple(leading), audit_part, received_at, per_record, before, after
    )


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
    return plan.message(value, extra_headers, origin)
