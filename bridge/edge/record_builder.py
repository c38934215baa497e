"""Building the Kafka record for a message that arrived on a route, the same for every protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bridge.edge.audit import audit_headers
from bridge.model.config import Route
from bridge.model.message import Headers, Message, Origin

SourceResolver = Callable[[str], str | None]


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


def build_message(
    route: Route,
    params: Mapping[str, str],
    value: bytes | None,
    origin: Origin,
    resolve: SourceResolver,
    extra_headers: Sequence[tuple[str, bytes]] = (),
    audit: bool = True,
) -> Message:
    """The record for ``value`` arriving on ``route`` with address ``params``.

    Audit headers (principal, protocol, client id, remote address, received-at, route; see
    :mod:`bridge.edge.audit`) come last, unless the route switches them off or ``audit`` is False
    (records the bridge writes on its own behalf, such as MQTT session state).

    Raises :class:`UnroutableMessage` if a key or header template cannot be filled.
    """
    key: bytes | None = None
    if route.key is not None:
        rendered = route.key.render(params, resolve)
        if rendered is None:
            raise UnroutableMessage(f"route {route.name}: cannot build key {route.key.source}")
        key = rendered.encode()
    headers: list[tuple[str, bytes]] = []
    for name, template in route.headers.items():
        rendered = template.render(params, resolve)
        if rendered is None:
            raise UnroutableMessage(
                f"route {route.name}: cannot build header {name} = {template.source}"
            )
        headers.append((name, rendered.encode()))
    if route.content_type:
        headers.append(("content-type", route.content_type.encode()))
    headers.extend(extra_headers)
    if audit:
        headers.extend(audit_headers(route.audit, route.name, origin))
    headers_tuple: Headers = tuple(headers)
    return Message(route.topic, key, value, headers_tuple, origin=origin)
