"""Routes as *data products* for agents: which MCP tools each route gives, from routing.toml
alone (no caller, no I/O). The MCP front-end (protocols/mcp/catalogue.py) filters these by the
caller's token; the API documents (bridge/apidocs) list them per product. One definition, so
the documents can never name a tool the front-end does not serve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bridge.model.config import Config, Route

ToolKind = Literal["read", "read_latest", "publish"]
DEFAULT_MCP_PATH = "/mcp"


@dataclass(frozen=True, slots=True)
class ProductTool:
    name: str
    kind: ToolKind
    route: Route
    action: Literal["publish", "subscribe"]  # the access rule that decides who sees it

    @property
    def roles(self) -> tuple[str, ...] | None:
        """The roles of the route's rule (None: anyone)."""
        access = self.route.access
        return access.publish if self.action == "publish" else access.subscribe


def mcp_path(config: Config) -> str | None:
    """Where the MCP endpoint is on the HTTP listener (None: off, or no HTTP listener)."""
    if config.http_listener is None:
        return None
    path = config.http_listener.options.get("mcp_path", DEFAULT_MCP_PATH)
    return str(path) if path else None


def record_params(route: Route) -> tuple[str, ...]:
    """Address parameters that a record of ``route`` carries in its key or headers."""
    names: list[str] = []
    for template in (route.key, *route.headers.values()):
        if template is None:
            continue
        for name in template.parameters:
            if name not in names:
                names.append(name)
    return tuple(names)


def is_compacted(config: Config, route: Route) -> bool:
    spec = config.kafka.topics.get(route.topic)
    return bool(spec is not None and spec.compact)


def accepts_writes(route: Route) -> bool:
    """Some protocol writes the route (MQTT, or an HTTP POST/PUT): MCP opens no new write path
    onto a topic that is read-only everywhere else."""
    if route.mqtt is not None:
        return True
    return any(str(b.options.get("method", "")).upper() in ("POST", "PUT") for b in route.http)


def publish_idempotency(route: Route) -> Literal["required", "optional", "off"]:
    """Whether a publish to ``route`` takes an idempotency key: as its HTTP POST/PUT binding
    says (``idempotency``, default optional), so an agent gets the guarantee an app gets on the
    same product; "off" for routes written only over MQTT (no key there)."""
    found: Literal["required", "optional", "off"] = "off"
    for binding in route.http:
        if str(binding.options.get("method", "")).upper() not in ("POST", "PUT"):
            continue
        mode = str(binding.options.get("idempotency", "optional"))
        if mode == "required":
            return "required"
        if mode == "optional":
            found = "optional"
    return found


DEFAULT_REPLY_WAIT_S = 10.0  # as HTTP's reply_wait_s
MAX_REPLY_WAIT_S = 30.0  # an agent's call is bounded whatever the route says


@dataclass(frozen=True, slots=True)
class RequestReply:
    """A route whose writes are requests answered on a reply topic (its HTTP POST/PUT's
    ``reply_topic``): a publish waits up to ``wait_s`` for the answer."""

    reply_topic: str
    wait_s: float


def request_reply(route: Route) -> RequestReply | None:
    for binding in route.http:
        if str(binding.options.get("method", "")).upper() not in ("POST", "PUT"):
            continue
        topic = binding.options.get("reply_topic")
        if topic:
            wait = float(binding.options.get("reply_wait_s", DEFAULT_REPLY_WAIT_S))
            return RequestReply(str(topic), min(wait, MAX_REPLY_WAIT_S))
    return None


def serves_reads(route: Route) -> bool:
    """Some protocol reads the route (SSE, MQTT, or an HTTP GET): a topic only ever written over
    HTTP (bets) stays unreadable to agents too, whatever its access rules leave open."""
    if route.sse is not None or route.mqtt is not None:
        return True
    return any(str(b.options.get("method", "")).upper() == "GET" for b in route.http)


def has_latest(config: Config, route: Route) -> bool:
    """A latest-by-key read: a compacted topic whose key is made of address parameters only."""
    key = route.key
    return (
        is_compacted(config, route)
        and key is not None
        and bool(key.parameters)
        and not any(source.startswith("$") for source in key.sources)
    )


def product_tools(config: Config, route: Route) -> list[ProductTool]:
    """The MCP tools of one route, before any caller's filter."""
    tools: list[ProductTool] = []
    if serves_reads(route):
        tools.append(ProductTool(f"read_{route.name}", "read", route, "subscribe"))
        if has_latest(config, route):
            tools.append(
                ProductTool(f"read_latest_{route.name}", "read_latest", route, "subscribe")
            )
    if accepts_writes(route):
        tools.append(ProductTool(f"publish_{route.name}", "publish", route, "publish"))
    return tools


def mcp_tools_document(config: Config) -> dict[str, object] | None:
    """The ``x-edgebridge-mcp`` extension of the API documents: the endpoint and every tool with
    the roles that see it (None when MCP is off)."""
    path = mcp_path(config)
    if path is None:
        return None
    return {
        "endpoint": path,
        "transport": "streamable-http (also stdio: edgebridge mcp --config FILE)",
        "always": ["list_products", "describe_product"],
        "tools": [
            {
                "name": tool.name,
                "kind": tool.kind,
                "product": route.name,
                "roles": list(tool.roles) if tool.roles is not None else ["anonymous"],
                **({"identity": route.access.identity} if route.access.identity else {}),
            }
            for route in config.routes
            for tool in product_tools(config, route)
        ],
    }


# -- the catalog (issue 16 item 4, issue 17 item 4): each route as a product, with every door --

GRPC_SERVICE = "/edgebridge.v1.Bridge"


@dataclass(frozen=True, slots=True)
class GrpcMethod:
    path: str  # "/edgebridge.v1.Bridge/Subscribe", or a bound method of the user's .proto
    action: Literal["publish", "subscribe"]  # the access rule that decides who may call it


def grpc_methods(route: Route) -> list[GrpcMethod]:
    """The gRPC methods that reach ``route`` (none without ``[routes.grpc]``): the generic
    service's Produce and Subscribe, Request with a reply topic, and a bound ``produce``."""
    if route.grpc is None:
        return []
    methods = [
        GrpcMethod(f"{GRPC_SERVICE}/Produce", "publish"),
        GrpcMethod(f"{GRPC_SERVICE}/Subscribe", "subscribe"),
    ]
    if route.grpc.get("reply_topic"):
        methods.append(GrpcMethod(f"{GRPC_SERVICE}/Request", "publish"))
    if route.grpc_produce is not None:
        methods.append(GrpcMethod(route.grpc_produce.path, "publish"))
    return methods


def _roles(roles: tuple[str, ...] | None) -> list[str]:
    return list(roles) if roles is not None else ["anonymous"]


def product_entry(config: Config, route: Route) -> dict[str, Any]:
    """One route as the catalog lists it, from routing.toml alone: what it is (description,
    owner, tags, version, schema), every address that reaches it per protocol, who may read
    and write it, and where (jurisdiction). GET /catalog adds the live health to this; the API
    documents carry it as it is, so the two can never disagree."""
    info = route.product
    writes = accepts_writes(route) or route.grpc is not None
    reads = serves_reads(route) or route.grpc is not None
    addresses: dict[str, Any] = {}
    if route.mqtt is not None:
        addresses["mqtt"] = [route.mqtt.template.source]
    if route.sse is not None:
        addresses["sse"] = [route.sse.template.source]
    if route.http:
        addresses["http"] = [f"{b.options.get('method')} {b.template.source}" for b in route.http]
    tools = [tool.name for tool in product_tools(config, route)] if mcp_path(config) else []
    if tools:
        addresses["mcp"] = tools
    # Listed from the route's [routes.grpc] even when this file has no [listeners.grpc] (the
    # demo adds one at start): the route is declared reachable over gRPC.
    methods = grpc_methods(route)
    if methods:
        addresses["grpc"] = [method.path for method in methods]
    entry: dict[str, Any] = {
        "name": route.name,
        "description": info.description,
        "owner": info.owner,
        "tags": list(info.tags),
        "version": info.version,
        "topic": route.topic,
        "key": route.key.source if route.key is not None else None,
        "schema": _relative(config, route.schema_path),
        "content_type": route.content_type,
        "compacted": is_compacted(config, route),
        "protocols": sorted(addresses),
        "addresses": addresses,
        "access": {
            # [] when no protocol writes (reads) it, whatever the rule would allow.
            "publish": _roles(route.access.publish) if writes else [],
            "subscribe": _roles(route.access.subscribe) if reads else [],
            **({"identity": route.access.identity} if route.access.identity else {}),
        },
        "jurisdiction": _jurisdiction(route),
    }
    if route.dead_letter is not None:
        entry["dead_letter_topic"] = route.dead_letter
    transform = route.transform
    if transform is not None and transform.inbound is not None:
        # Two schemas: what publishers send, and the record the transform makes of it.
        entry["transform"] = {
            "version": transform.version,
            "source_schema": _relative(config, transform.source_schema_path),
        }
    if route.kafka is not None:
        entry["republishes"] = str(route.kafka["source"])
    return entry


def _relative(config: Config, path: Path | None) -> str | None:
    """A schema file as routing.toml names it (relative to it), not this machine's full path."""
    if path is None:
        return None
    return os.path.relpath(path, config.path.parent.resolve())


def _jurisdiction(route: Route) -> dict[str, Any] | None:
    rule = route.jurisdiction
    if rule is None:
        return None  # anywhere
    return {
        "publish": list(rule.publish) if rule.publish is not None else ["*"],
        "read": list(rule.read) if rule.read is not None else ["*"],
        "local": rule.local,
        "exceptions": [
            {
                "role": e.role,
                **({"publish": list(e.publish)} if e.publish is not None else {}),
                **({"read": list(e.read)} if e.read is not None else {}),
            }
            for e in rule.exceptions
        ],
    }


def catalog_document(config: Config) -> list[dict[str, Any]]:
    """Every route as a product, in routing.toml order."""
    return [product_entry(config, route) for route in config.routes]
