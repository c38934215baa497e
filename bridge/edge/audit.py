"""Audit headers: who put each accepted record into Kafka, from where, when, through which route.

Added by :func:`bridge.edge.record_builder.build_message` to every record a client produces, so every
front-end gets them the same way. Names are configurable (``[audit]``, overridden per route by
``[routes.audit]``) and a route can switch them off (``audit = false``).

Audit headers describe the *producer* of a record. Front-ends that copy Kafka headers to
clients (MQTT 5 user properties, HTTP reply headers) should leave them out with
:func:`is_audit_header`: the remote address and identity of one client are not for others.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.model.message import Origin

FIELDS = ("principal", "protocol", "client_id", "remote_address", "received_at", "route")
PREFIX = "edgebridge-"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Which audit fields are written, and as which Kafka header names."""

    headers: tuple[tuple[str, str], ...]  # (field, header name)

    @property
    def enabled(self) -> bool:
        return bool(self.headers)

    def names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.headers)


DEFAULT = AuditSettings(tuple((field, PREFIX + field.replace("_", "-")) for field in FIELDS))
OFF = AuditSettings(())
_DEFAULT_NAMES = DEFAULT.names()


def audit_settings(
    raw: bool | Mapping[str, Any] | None, base: AuditSettings = DEFAULT
) -> AuditSettings:
    """Settings from an ``[audit]`` / ``[routes.audit]`` value laid over ``base``.

    ``false`` (or ``enabled = false``) switches auditing off; a field set to ``false`` is left
    out; a string renames its header; ``true`` or a missing value keeps ``base``.
    """
    if raw is None or raw is True:
        return base
    if raw is False or raw.get("enabled") is False:
        return OFF
    names = dict(base.headers) if base.enabled else dict(DEFAULT.headers)
    for field in FIELDS:
        if field not in raw:
            continue
        if raw[field] is False:
            names.pop(field, None)
        else:
            names[field] = str(raw[field])
    return AuditSettings(tuple((field, names[field]) for field in FIELDS if field in names))


_second_text: list[tuple[int, str]] = [(-1, "")]  # the last second formatted (strftime is slow)


def received_at_text(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds: sortable, readable, unambiguous."""
    whole = int(epoch_s)
    cached_second, text = _second_text[0]
    if whole != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second_text[0] = (whole, text)
    return f"{text}.{int((epoch_s - whole) * 1000):03d}Z"


def audit_headers(
    settings: AuditSettings, route_name: str, origin: Origin | None
) -> list[tuple[str, bytes]]:
    """The audit headers for a record accepted on ``route_name`` from ``origin``.

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
    }
    return [(name, value.encode()) for field, name in settings.headers if (value := values[field])]


def is_audit_header(name: str, settings: AuditSettings = DEFAULT) -> bool:
    """Whether a Kafka header is an audit header (under ``settings`` or the default names)."""
    return name in _DEFAULT_NAMES or name in settings.names()


def without_audit(
    headers: Iterable[tuple[str, bytes]], settings: AuditSettings = DEFAULT
) -> list[tuple[str, bytes]]:
    """``headers`` minus the audit headers, for front-ends that show headers to clients."""
    return [(name, value) for name, value in headers if not is_audit_header(name, settings)]
