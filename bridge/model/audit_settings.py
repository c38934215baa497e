"""The ``[audit]`` settings: which audit fields are written, under which Kafka header names.

Part of the model because routing.toml's loader builds them; writing the headers is the edge's
job (:mod:`bridge.edge.audit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Who and from where (the first six), then lineage: which bridge process built the record, and
# the version and schema of the data product it was accepted into, and the version of the
# transform that made it (with the schema of what the sender sent) when the route has one.
FIELDS = (
    "principal",
    "protocol",
    "client_id",
    "remote_address",
    "received_at",
    "route",
    "instance",
    "route_version",
    "schema",
    "transform",
    "source_schema",
)
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


def is_audit_header(name: str, settings: AuditSettings = DEFAULT) -> bool:
    """Whether a Kafka header is an audit header (under ``settings`` or the default names)."""
    return name in _DEFAULT_NAMES or name in settings.names()
