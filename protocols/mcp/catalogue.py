"""Which MCP tools a caller sees: generated from the route table, filtered by the same access
rules as every other protocol. Pure data in, pure data out (no I/O), so it is tested without a
broker.

Every route is a *data product*. A caller gets, per product it may use:

* ``read_<route>``: records since a position, bounded, with the next position (routes that some
  protocol reads, for callers the route lets subscribe);
* ``read_latest_<route>``: the latest value of one key (routes on a compacted topic whose key is
  made of address parameters);
* ``publish_<route>``: one record, the route's JSON Schema as the input schema (routes that
  accept writes from some protocol, for callers the route lets publish);

and ``list_products`` / ``describe_product`` for everyone. A route bound to the caller's identity
(``[routes.access] identity = "user"``) takes that parameter from the token, never from the
agent: it is not in the tool's input schema at all. Nothing names Kafka (no topic names): an
agent sees products, never the infrastructure behind them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bridge.edge.access import Principal, authorize
from bridge.edge.governance import region_of
from bridge.model.config import Config, Route
from bridge.model.jurisdiction import decide
from bridge.model.products import (
    is_compacted,
    product_tools,
    publish_idempotency,
    record_params,
)

Kind = Literal["list", "describe", "read", "read_latest", "publish"]

LIST_TOOL = "list_products"
DESCRIBE_TOOL = "describe_product"
VALUE_ARGUMENT = "value"  # the record of a publish tool when the route also needs parameters
POSITION_ARGUMENT = "position"
LIMIT_ARGUMENT = "limit"
MAX_READ_LIMIT = 100  # records per read call: an agent's context is small
IDEMPOTENCY_ARGUMENT = "idempotency_key"  # publish: the route's idempotency, as HTTP's header
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool as a caller sees it."""

    name: str
    kind: Kind
    route: Route | None
    description: str
    input_schema: Mapping[str, Any]
    # Parameters the tool takes from the arguments (the identity-bound one is not among them).
    params: tuple[str, ...] = ()
    wrapped: bool = False  # publish: the record is under "value", beside the parameters
    idempotency: str = "off"  # publish: required | optional | off (publish_idempotency)


def may(
    route: Route,
    action: Literal["publish", "subscribe"],
    principal: Principal,
    config: Config,
    listener: str = "",
) -> bool:
    """May ``principal`` use ``route`` for ``action`` at all (for some parameters), by its roles,
    identity binding and, for a route with ``[routes.jurisdiction]``, its region (the region of
    ``listener``, ``http`` or none for stdio, when the token names none)?"""
    if authorize(route, action, principal, {}) is not None:
        return False
    if route.jurisdiction is not None:
        region = region_of(principal, config, listener or "mcp")
        verb: Literal["publish", "read"] = "publish" if action == "publish" else "read"
        if not decide(route.jurisdiction, verb, region, principal.roles).allowed:
            return False
    # Bound to the caller's identity: useless without one.
    return route.access.identity is None or principal.authenticated


def free_params(route: Route) -> tuple[str, ...]:
    """The parameters an agent supplies (the identity-bound one comes from the token)."""
    return tuple(p for p in record_params(route) if p != route.access.identity)


def _string_properties(names: tuple[str, ...]) -> dict[str, Any]:
    return {name: {"type": "string", "minLength": 1} for name in names}


def product_summary(config: Config, route: Route) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "name": route.name,
        "parameters": list(free_params(route)),
        "compacted": is_compacted(config, route),
        "content_type": route.content_type
        or ("application/json" if route.schema is not None else None),
    }
    # The route's catalog entry (routing.toml description/owner/tags/version), as GET /catalog
    # lists it; the schema's own description when the route gives none.
    info = route.product
    if info.description:
        summary["description"] = info.description
    elif route.schema is not None and route.schema.get("description"):
        summary["description"] = route.schema["description"]
    for name, value in (("owner", info.owner), ("version", info.version)):
        if value is not None:
            summary[name] = value
    if info.tags:
        summary["tags"] = list(info.tags)
    return summary


def tools_for(
    config: Config, routes: tuple[Route, ...], principal: Principal, listener: str = ""
) -> list[ToolSpec]:
    """Every tool ``principal`` may use, in route order."""
    tools = [
        ToolSpec(
            LIST_TOOL,
            "list",
            None,
            "List the data products (routes) you may read or publish to.",
            {"type": "object", "properties": {}, "additionalProperties": False},
        ),
        ToolSpec(
            DESCRIBE_TOOL,
            "describe",
            None,
            "Describe one data product: its parameters, JSON Schema and what you may do with it.",
            {
                "type": "object",
                "properties": {"name": {"type": "string", "minLength": 1}},
                "required": ["name"],
                "additionalProperties": False,
            },
        ),
    ]
    for route in routes:
        params = free_params(route)
        for tool in product_tools(config, route):
            if not may(route, tool.action, principal, config, listener):
                continue
            if tool.kind == "read":
                tools.append(_read_tool(tool.name, route, params))
            elif tool.kind == "read_latest":
                tools.append(_latest_tool(tool.name, route))
            else:
                tools.append(_publish_tool(tool.name, route, params))
    return tools


def _read_tool(name: str, route: Route, params: tuple[str, ...]) -> ToolSpec:
    return ToolSpec(
        name,
        "read",
        route,
        f"Read records of {route.name} after a position, "
        f"at most {MAX_READ_LIMIT} per call, oldest first. Pass the returned "
        "'next_position' to continue exactly where you stopped (omit it to start "
        "from the oldest record kept).",
        {
            "type": "object",
            "properties": {
                POSITION_ARGUMENT: {"type": "string", "minLength": 1},
                LIMIT_ARGUMENT: {"type": "integer", "minimum": 1, "maximum": MAX_READ_LIMIT},
                **_string_properties(params),
            },
            "additionalProperties": False,
        },
        params,
    )


def _latest_tool(name: str, route: Route) -> ToolSpec:
    assert route.key is not None
    needed = tuple(p for p in route.key.parameters if p != route.access.identity)
    return ToolSpec(
        name,
        "read_latest",
        route,
        f"The latest value of {route.name} for one key ({', '.join(needed) or 'yours'}).",
        {
            "type": "object",
            "properties": _string_properties(needed),
            "required": list(needed),
            "additionalProperties": False,
        },
        needed,
    )


def _publish_tool(name: str, route: Route, params: tuple[str, ...]) -> ToolSpec:
    # What a publisher sends: with an inbound transform, its source shape (the route's schema
    # is the canonical record the transform makes).
    transform = route.transform
    sent = (
        transform.source_schema
        if transform is not None and transform.inbound is not None
        else route.schema
    )
    schema = dict(sent) if sent is not None else None
    idempotency = publish_idempotency(route)
    description = (
        f"Publish one record to {route.name}; it is checked "
        "against the product's JSON Schema before anything reaches Kafka."
    )
    key_property: dict[str, Any] = {}
    if idempotency != "off":
        description += (
            f" Pass '{IDEMPOTENCY_ARGUMENT}' (a new unique string per record) to make a retry "
            "safe: the same key again returns the first result (replayed: true) and never "
            "writes a second record."
        )
        key_property = {
            IDEMPOTENCY_ARGUMENT: {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_KEY_LENGTH,
                "pattern": "^[ -~]+$",
                "description": "Makes a retry of this call safe (printable ASCII).",
            }
        }
    key_required = [IDEMPOTENCY_ARGUMENT] if idempotency == "required" else []
    properties = schema.get("properties") if schema is not None else None
    if (
        schema is not None
        and schema.get("type") == "object"
        and not params
        and not (isinstance(properties, dict) and IDEMPOTENCY_ARGUMENT in properties)
    ):
        # The route's own schema is the tool's input: an agent fills in the record directly
        # (with the idempotency key beside the record's members, taken out before the check).
        if key_property:
            schema["properties"] = {**(properties or {}), **key_property}
            schema["required"] = [*schema.get("required", []), *key_required]
        return ToolSpec(name, "publish", route, description, schema, params, False, idempotency)
    value_schema: Any = schema if schema is not None else {"type": "string"}
    return ToolSpec(
        name,
        "publish",
        route,
        description,
        {
            "type": "object",
            "properties": {
                **_string_properties(params),
                VALUE_ARGUMENT: value_schema,
                **key_property,
            },
            "required": [*params, VALUE_ARGUMENT, *key_required],
            "additionalProperties": False,
        },
        params,
        wrapped=True,
        idempotency=idempotency,
    )
