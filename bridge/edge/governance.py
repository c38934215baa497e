"""Filters and jurisdiction at the edge, the same for every protocol (issue 16 items 3 and 6).

Front-ends call these before anything reaches Kafka or a subscription starts:

* :func:`subscriber_filter`: a client's filter values (query parameters, MQTT 5 user
  properties) checked against the route's declared ``[[routes.filters]]`` and made canonical,
  together with the jurisdiction's region condition, into one
  :class:`~bridge.model.record_filter.RecordFilter` that the hub groups subscribers by;
* :func:`publish_decision` / :func:`read_decision`: the route's ``[routes.jurisdiction]``
  applied to the caller's region; a refusal is logged here (the audit line naming the rule),
  and the front-end answers in its own protocol (HTTP/SSE 451, MQTT 0x87);
* :func:`tag_headers`: what an accepted record carries: the region it was produced in and the
  rule that let it in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from bridge.edge.access import Principal
from bridge.model.config import RESERVED_FILTER_NAMES, Config, Route
from bridge.model.jurisdiction import (
    REGION_HEADER,
    RULE_HEADER,
    Decision,
    caller_region,
    decide,
)
from bridge.model.record_filter import (
    FilterError,
    RecordFilter,
    combine,
    header_equals,
)

log = structlog.get_logger("edgebridge.audit")

__all__ = [
    "FilterError",
    "listener_region",
    "publish_decision",
    "read_decision",
    "region_of",
    "subscriber_filter",
    "tag_headers",
]


def listener_region(config: Config, listener: str) -> str | None:
    """``region`` of ``[listeners.<listener>]`` (mqtt, http, sse), else the instance's."""
    settings = {
        "mqtt": config.mqtt_listener,
        "http": config.http_listener,
    }.get(listener)
    region = settings.options.get("region") if settings is not None else None
    return str(region) if region else config.region


def region_of(principal: Principal, config: Config, listener: str = "") -> str | None:
    """The caller's region: its token's region claim, else the region of the listener it came
    through, else this instance's region."""
    return caller_region(principal.claims, config.region_claim, listener_region(config, listener))


def _decision(
    route: Route, action: str, principal: Principal, config: Config, protocol: str, listener: str
) -> Decision | None:
    jurisdiction = route.jurisdiction
    if jurisdiction is None:
        return None
    region = region_of(principal, config, listener)
    decision = decide(
        jurisdiction, "publish" if action == "publish" else "read", region, principal.roles
    )
    if not decision.allowed:
        # The audit record of a refusal: nothing was produced, so it lives in the log.
        log.warning(
            "audit.jurisdiction_refused",
            route=route.name,
            action=action,
            protocol=protocol,
            principal=principal.identity,
            region=region,
            rule=decision.rule,
        )
    return decision


def publish_decision(
    route: Route, principal: Principal, config: Config, protocol: str, listener: str = ""
) -> Decision | None:
    """None when the route has no jurisdiction; else the decision (check ``allowed``).
    ``listener``: the listener the caller came through (mqtt, http, sse), for its region."""
    return _decision(route, "publish", principal, config, protocol, listener or protocol)


def read_decision(
    route: Route, principal: Principal, config: Config, protocol: str, listener: str = ""
) -> Decision | None:
    return _decision(route, "read", principal, config, protocol, listener or protocol)


def tag_headers(decision: Decision | None) -> list[tuple[str, bytes]]:
    """The region an accepted record was produced in, and the rule that let it in."""
    if decision is None:
        return []
    tags = [(RULE_HEADER, decision.rule.encode())]
    if decision.region is not None:
        tags.insert(0, (REGION_HEADER, decision.region.encode()))
    return tags


def subscriber_filter(
    route: Route,
    values: Mapping[str, str],
    decision: Decision | None = None,
    extra_reserved: Sequence[str] = (),
) -> RecordFilter | None:
    """The canonical filter of a subscriber: its declared filter values, plus (for a route whose
    records stay in their region) only records produced in the reader's region.

    Raises :class:`FilterError` for a bad value, or an undeclared name on a route that declares
    filters (a route without filters ignores query parameters, as it always has).
    """
    if route.filters.params:
        unknown = route.filters.undeclared(list(values), (*RESERVED_FILTER_NAMES, *extra_reserved))
        if unknown:
            declared = ", ".join(route.filters.names)
            raise FilterError(
                unknown[0],
                f"{unknown[0]!r} is not a filter of route {route.name}; declared: {declared}",
            )
    declared_filter = route.filters.bind(values)
    region_filter = None
    if decision is not None and decision.sees is not None:
        region_filter = RecordFilter.of([header_equals(REGION_HEADER, decision.sees)])
    return combine(declared_filter, region_filter)
