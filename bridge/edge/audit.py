"""Audit headers: who put each accepted record into Kafka, from where, when, through which route.

Added by :func:`bridge.edge.record_builder.build_message` to every record a client produces, so every
front-end gets them the same way. Names are configurable (``[audit]``, overridden per route by
``[routes.audit]``) and a route can switch them off (``audit = false``).

Audit headers describe the *producer* of a record. Front-ends that copy Kafka headers to
clients (MQTT 5 user properties, HTTP reply headers) should leave them out with
:func:`is_audit_header`: the remote address and identity of one client are not for others.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable

from bridge.model.audit_settings import DEFAULT, AuditSettings, is_audit_header
from bridge.model.config import Route
from bridge.model.message import Origin

__all__ = ["audit_headers", "is_audit_header", "lineage", "received_at_text", "without_audit"]

_second_text: list[tuple[int, str]] = [(-1, "")]  # the last second formatted (strftime is slow)

# This bridge process, as lineage names it: host and pid (each worker of --workers N is its own).
INSTANCE = f"{socket.gethostname()}/{os.getpid()}"


def received_at_text(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds: sortable, readable, unambiguous."""
    whole = int(epoch_s)
    cached_second, text = _second_text[0]
    if whole != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second_text[0] = (whole, text)
    return f"{text}.{int((epoch_s - whole) * 1000):03d}Z"


def audit_headers(
    settings: AuditSettings,
    route_name: str,
    origin: Origin | None,
    route_version: str | None = None,
    schema: str | None = None,
    transform: str | None = None,
    source_schema: str | None = None,
) -> list[tuple[str, bytes]]:
    """The audit headers for a record accepted on ``route_name`` from ``origin``, with its
    lineage: this instance, the route's product ``version`` and its ``schema`` file's name.

    A field with no value (an anonymous caller has no principal) is left out rather than
    written empty, so "absent" and "empty string" never get confused downstream.
    """
    if not settings.enabled or origin is None:
        return []
    values = {
        "principal": origin.principal,
        "protocol": origin.protocol,
        "client_id": origin.client_id,
        "remote_address": origin.remote_address,
        "received_at": received_at_text(origin.received_at),
        "route": route_name,
        "instance": INSTANCE,
        "route_version": route_version,
        "schema": schema,
        "transform": transform,
        "source_schema": source_schema,
    }
    return [(name, value.encode()) for field, name in settings.headers if (value := values[field])]


def lineage(route: Route) -> tuple[str | None, str | None, str | None, str | None]:
    """The route's part of a record's lineage: its product version and its schema's file name
    (the file, not its path: where the bridge keeps it is not the consumer's business); with an
    inbound transform, the transform's version and its source schema's file name."""
    schema = route.schema_path.name if route.schema_path is not None else None
    transform = route.transform
    if transform is None or transform.inbound is None:
        return route.product.version, schema, None, None
    source = transform.source_schema_path
    return (
        route.product.version,
        schema,
        transform.version or "unversioned",
        source.name if source is not None else None,
    )


def without_audit(
    headers: Iterable[tuple[str, bytes]], settings: AuditSettings = DEFAULT
) -> list[tuple[str, bytes]]:
    """``headers`` minus the audit headers, for front-ends that show headers to clients."""
    return [(name, value) for name, value in headers if not is_audit_header(name, settings)]
