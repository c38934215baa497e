"""Jurisdiction: where a route's records may be published and read, by the caller's region.

An instance has a region (``[bridge] region``); a caller's region is its token's region claim
(``[guard] region_claim``) when it has one, else the instance's. A route declares
``[routes.jurisdiction]``::

    publish = ["gb"]          # regions whose callers may publish ("*": any)
    read = ["gb", "ie"]       # regions whose callers may subscribe / read
    local = true              # a record is only read in the region it was produced in
    [[routes.jurisdiction.exceptions]]
    role = "regulator"        # callers with this role ...
    read = ["*"]              # ... may read from these regions (and see every region's records)

Every decision names the rule that made it (``routes[odds-gb].jurisdiction.read``), for the
refusal a client gets, the log line and the audit header of an accepted record.

Records of such a route carry :data:`REGION_HEADER` (the producer's region) and
:data:`RULE_HEADER` (the rule that let it in). Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

REGION_HEADER = "edgebridge-region"
RULE_HEADER = "edgebridge-jurisdiction-rule"
ANY_REGION = "*"

Action = Literal["publish", "read"]


@dataclass(frozen=True, slots=True)
class RoleException:
    role: str
    publish: tuple[str, ...] | None = None
    read: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Jurisdiction:
    route: str
    publish: tuple[str, ...] | None = None  # None: anywhere
    read: tuple[str, ...] | None = None
    local: bool = False
    exceptions: tuple[RoleException, ...] = ()

    @classmethod
    def of(cls, route: str, raw: Mapping[str, Any]) -> Jurisdiction:
        def regions(value: Any) -> tuple[str, ...] | None:
            return None if value is None else tuple(str(v).lower() for v in value)

        return cls(
            route=route,
            publish=regions(raw.get("publish")),
            read=regions(raw.get("read")),
            local=bool(raw.get("local", False)),
            exceptions=tuple(
                RoleException(e["role"], regions(e.get("publish")), regions(e.get("read")))
                for e in raw.get("exceptions", [])
            ),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str  # which rule decided, e.g. "routes[odds-gb].jurisdiction.read"
    region: str | None  # the caller's region the rule was applied to
    # For a reader: the region whose records it may see (None: every region's).
    sees: str | None = None

    @property
    def reason(self) -> str:
        where = self.region or "an unknown region"
        verb = "allows" if self.allowed else "refuses"
        return f"{self.rule} {verb} callers from {where}"


def caller_region(
    claims: Mapping[str, Any], claim: str | None, instance_region: str | None
) -> str | None:
    """The token's region claim when configured and present, else the instance's region."""
    if claim:
        value = claims.get(claim)
        if isinstance(value, str) and value:
            return value.lower()
    return instance_region.lower() if instance_region else None


def _allows(regions: tuple[str, ...] | None, region: str | None) -> bool:
    if regions is None or ANY_REGION in regions:
        return True
    return region is not None and region in regions


def decide(
    jurisdiction: Jurisdiction, action: Action, region: str | None, roles: Iterable[str]
) -> Decision:
    """May a caller from ``region`` with ``roles`` ``action`` on this route?"""
    at = f"routes[{jurisdiction.route}].jurisdiction"
    roles = frozenset(roles)
    for index, exception in enumerate(jurisdiction.exceptions):
        regions = exception.publish if action == "publish" else exception.read
        if exception.role in roles and regions is not None and _allows(regions, region):
            # A role exception reads every region's records (a regulator, an auditor).
            return Decision(
                True, f"{at}.exceptions[{index}] (role {exception.role}).{action}", region
            )
    if action == "read" and jurisdiction.local and region is None:
        return Decision(False, f"{at}.local (the caller's region is unknown)", None)
    regions = jurisdiction.publish if action == "publish" else jurisdiction.read
    allowed = _allows(regions, region)
    rule = f"{at}.{action}" if regions is not None else f"{at} (no {action} list)"
    sees = region if action == "read" and jurisdiction.local and allowed else None
    if action == "read" and jurisdiction.local and allowed:
        rule = f"{rule} + {at}.local"
    return Decision(allowed, rule, region, sees)
