"""The MCP server: the SDK's low-level ``Server`` with handlers that ask the catalogue which tools
and resources the caller may see, and :class:`~protocols.mcp.operations.Operations` to do the work.

The low-level ``Server`` rather than ``MCPServer``: ``MCPServer`` registers a fixed set of Python
functions whose input schemas come from type hints, while here every caller gets its own tool
list, generated from routing.toml and filtered by its token, with each route's JSON Schema as the
input schema. Both are the same SDK (``MCPServer`` is built on this class); transports, sessions
and the protocol stay the SDK's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import mcp_types as types
import structlog
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    ResourceUpdated,
    event_to_notification,
)
from mcp_types import INVALID_REQUEST

from bridge.edge.access import ANONYMOUS, Principal
from bridge.edge.governance import region_of
from bridge.model.config import Config, Route
from bridge.model.products import serves_reads
from bridge.telemetry import metrics
from protocols.mcp.catalogue import ToolSpec, may, product_summary, tools_for
from protocols.mcp.idempotency import Forward
from protocols.mcp.operations import (
    PROTOCOL,
    SCOPE_PRINCIPAL,
    Operations,
    RateLimiter,
    ToolFailure,
)
from protocols.mcp.resources import MAX_PER_SESSION, Watches, parse_uri, product_uri, schema_uri

log = structlog.get_logger(__name__)

TOOL_CACHE_SIZE = 1024  # kinds of callers (roles x region) whose tool lists are kept
CatalogueKey = tuple[bool, frozenset[str], str | None]  # authenticated, roles, region

PrincipalOf = Callable[[Any], Principal]
# How a call reaches the instance that owns its idempotency key: (ctx, tool, arguments) -> a
# forward to an address, or None where forwarding is not possible (a call forwarded already).
ForwardOf = Callable[[Any, str, dict[str, Any]], Forward | None]


def principal_from_request(ctx: Any) -> Principal:
    """The principal the HTTP layer authenticated for this request (anonymous without one)."""
    request = getattr(ctx, "request", None)
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        found = scope.get(SCOPE_PRINCIPAL)
        if isinstance(found, Principal):
            return found
    return ANONYMOUS


def _client_of(ctx: Any, principal: Principal) -> str:
    """Whom the rate limit counts: the identity, else the remote address (else the session)."""
    if principal.identity is not None:
        return "id:" + principal.identity
    request = getattr(ctx, "request", None)
    client = getattr(request, "client", None)
    if client is not None:
        return f"addr:{client.host}"
    return f"session:{id(getattr(ctx, 'session', None))}"


def _result(document: dict[str, Any], error: bool = False) -> types.CallToolResult:
    text = json.dumps(document, ensure_ascii=False)
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=document, is_error=error
    )


class McpService:
    """Everything one MCP server needs, shared by the HTTP and stdio transports."""

    def __init__(
        self,
        config: Config,
        routes: tuple[Route, ...],
        operations: Operations,
        limiter: RateLimiter,
        watches: Watches,
        principal_of: PrincipalOf = principal_from_request,
        subscriptions: bool = True,
        forward_of: ForwardOf | None = None,
        listener: str = "",
    ) -> None:
        self.forward_of = forward_of
        self.listener = listener  # whose region a caller without a region claim has
        self._tool_cache: dict[CatalogueKey, tuple[list[ToolSpec], dict[str, ToolSpec]]] = {}
        self.config = config
        self.routes = routes
        self.operations = operations
        self.limiter = limiter
        self.watches = watches
        self.principal_of = principal_of
        self.server: Server[Any] = Server(
            config.bridge_name,
            version="1",
            instructions="Edgebridge data products: list_products first; read_* tools return a "
            "next_position to continue exactly; publish_* tools take the product's JSON Schema.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_read_resource=self._read_resource,
            # Without sessions (stateless under --workers) there is no stream to notify on, so
            # the capability is not offered rather than accepted and never honoured.
            on_subscribe_resource=self._subscribe if subscriptions else None,
            on_unsubscribe_resource=self._unsubscribe if subscriptions else None,
            # The 2026-07-28 revision's replacement: the listen response is the stream, so it
            # needs no session and works under --workers too.
            on_subscriptions_listen=self._listen,
        )

    def tools(self, principal: Principal) -> list[ToolSpec]:
        return self._catalogue(principal)[0]

    def _catalogue(self, principal: Principal) -> tuple[list[ToolSpec], dict[str, ToolSpec]]:
        """The caller's tools (and by name), computed once per kind of caller: they depend only
        on being authenticated, the roles and the region, and building them (input schemas,
        access and jurisdiction per route) was a good part of a tools/call's cost here."""
        region = region_of(principal, self.config, self.listener or PROTOCOL)
        key = (principal.authenticated, principal.roles, region)
        found = self._tool_cache.get(key)
        if found is None:
            if len(self._tool_cache) >= TOOL_CACHE_SIZE:
                self._tool_cache.clear()  # many kinds of callers: start again, stay bounded
            tools = tools_for(self.config, self.routes, principal, self.listener)
            found = self._tool_cache[key] = (tools, {t.name: t for t in tools})
        return found

    # -- tools ----------------------------------------------------------------------------------

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        principal = self.principal_of(ctx)
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=t.name, description=t.description, input_schema=dict(t.input_schema)
                )
                for t in self.tools(principal)
            ]
        )

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        principal = self.principal_of(ctx)
        started = time.perf_counter()
        spec = self._catalogue(principal)[1].get(params.name)
        kind = spec.kind if spec is not None else "unknown"
        route = spec.route.name if spec is not None and spec.route is not None else ""
        arguments = params.arguments or {}
        try:
            wait = self.limiter.take(_client_of(ctx, principal))
            if wait > 0:
                raise ToolFailure(
                    "rate-limited",
                    f"too many calls: at most {self.limiter.rate:g} per second "
                    f"({self.limiter.burst} at once) per identity; retry in {wait:.2f} s",
                )
            if spec is None:
                # Unknown and forbidden look alike: a tool this caller may not use does not exist.
                raise ToolFailure("unknown-tool", f"no tool {params.name!r} for this caller")
            document = await self._run(spec, arguments, principal, ctx)
        except ToolFailure as failure:
            metrics.rejected(PROTOCOL, failure.kind.replace("-", "_"))
            metrics.MCP_TOOL_CALLS.labels(kind, route, failure.kind).inc()
            log.info(
                "mcp.call",
                tool=params.name,
                identity=principal.identity,
                outcome=failure.kind,
                detail=failure.detail,
                errors=failure.errors or None,
            )
            return _result(failure.document(), error=True)
        except Exception:
            # Never a trace to the agent: the log has it.
            log.exception("mcp.call_failed", tool=params.name, identity=principal.identity)
            metrics.MCP_TOOL_CALLS.labels(kind, route, "internal").inc()
            return _result(
                {"error": "internal", "detail": "the call failed; see the bridge log"}, True
            )
        metrics.MCP_TOOL_CALLS.labels(kind, route, "ok").inc()
        log.info(
            "mcp.call",
            tool=params.name,
            identity=principal.identity,
            outcome="ok",
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return _result(document)

    async def _run(
        self, spec: ToolSpec, arguments: dict[str, Any], principal: Principal, ctx: Any
    ) -> dict[str, Any]:
        ops = self.operations
        if spec.kind == "list":
            return ops.list_products(self.tools(principal))
        if spec.kind == "describe":
            return ops.describe_product(self.tools(principal), arguments.get("name"))
        if spec.kind == "read_latest":
            return await ops.read_latest(spec, arguments, principal)
        if spec.kind == "read":
            return await ops.read_since(spec, arguments, principal)
        session = getattr(ctx, "session", None)
        forward = self.forward_of(ctx, spec.name, arguments) if self.forward_of else None
        return await ops.publish(spec, arguments, principal, f"mcp-{id(session):x}", forward)

    # -- resources ------------------------------------------------------------------------------

    def _readable(self, principal: Principal) -> list[Route]:
        return [
            r
            for r in self.routes
            if serves_reads(r) and may(r, "subscribe", principal, self.config, self.listener)
        ]

    async def _list_resources(self, ctx: Any, params: Any) -> types.ListResourcesResult:
        principal = self.principal_of(ctx)
        resources: list[types.Resource] = []
        for route in self._readable(principal):
            resources.append(
                types.Resource(
                    uri=product_uri(route.name),
                    name=route.name,
                    description=f"Data product {route.name}; subscribe to hear when records arrive",
                    mime_type="application/json",
                )
            )
            if route.schema is not None:
                resources.append(
                    types.Resource(
                        uri=schema_uri(route.name),
                        name=f"{route.name} schema",
                        mime_type="application/schema+json",
                    )
                )
        return types.ListResourcesResult(resources=resources)

    def _resource_route(self, ctx: Any, uri: str) -> tuple[Route, bool]:
        parsed = parse_uri(uri)
        principal = self.principal_of(ctx)
        route = None
        if parsed is not None:
            route = next((r for r in self._readable(principal) if r.name == parsed[0]), None)
        if route is None or parsed is None or (parsed[1] and route.schema is None):
            raise ValueError(f"no resource {uri} for this caller")
        return route, parsed[1]

    async def _read_resource(
        self, ctx: Any, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        route, is_schema = self._resource_route(ctx, uri)
        if is_schema:
            body, mime = json.dumps(route.schema), "application/schema+json"
        else:
            body = json.dumps(
                {**product_summary(self.config, route), "schema": route.schema}, ensure_ascii=False
            )
            mime = "application/json"
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, text=body, mime_type=mime)]
        )

    async def _subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        route, is_schema = self._resource_route(ctx, uri)
        if is_schema:
            return types.EmptyResult()  # a schema changes only with routing.toml
        session = ctx.session
        principal = self.principal_of(ctx)
        bound = route.access.identity
        only = {bound: principal.identity} if bound and principal.identity else {}
        await self.watches.watch(session, uri, route, session.send_resource_updated, only)
        log.info("mcp.subscribed", uri=uri, identity=principal.identity)
        return types.EmptyResult()

    async def _listen(
        self, ctx: Any, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """``subscriptions/listen`` (2026-07-28): resource updates of the products this caller
        may read, on the listen request's own response stream. Our own handler rather than the
        SDK's bus: every stream is filtered by its caller's access (and identity), which a bus
        shared by all listeners knows nothing of. Other kinds (list changes) are not honored:
        tools and products change only with routing.toml."""
        subscription_id = ctx.request_id
        if subscription_id is None:
            raise MCPError(INVALID_REQUEST, "subscriptions/listen requires a request id")
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        principal = self.principal_of(ctx)
        honored: list[tuple[str, Route]] = []
        for uri in (params.notifications.resource_subscriptions or [])[:MAX_PER_SESSION]:
            try:
                route, is_schema = self._resource_route(ctx, uri)
            except ValueError:
                continue  # not honored: unknown, or not this caller's to read
            if not is_schema:
                honored.append((uri, route))
        # Watches coalesce per product, so one pending entry per product bounds the queue.
        updates: asyncio.Queue[str] = asyncio.Queue(maxsize=max(1, len(honored)))

        async def notify(uri: str) -> None:
            if not updates.full():
                updates.put_nowait(uri)

        owner = object()  # this stream's watches, apart from any session's
        try:
            for uri, route in honored:
                bound = route.access.identity
                only = {bound: principal.identity} if bound and principal.identity else {}
                await self.watches.watch(owner, uri, route, notify, only)
            acknowledged = types.SubscriptionFilter(
                resource_subscriptions=[uri for uri, _ in honored] or None
            )
            await ctx.session.send_notification(
                types.SubscriptionsAcknowledgedNotification(
                    params=types.SubscriptionsAcknowledgedNotificationParams(
                        notifications=acknowledged, _meta=meta
                    )
                ),
                related_request_id=subscription_id,
            )
            log.info("mcp.listening", uris=[u for u, _ in honored], identity=principal.identity)
            while True:  # until the client goes (the handler is cancelled) or the bridge stops
                uri = await updates.get()
                await ctx.session.send_notification(
                    event_to_notification(ResourceUpdated(uri), meta),
                    related_request_id=subscription_id,
                )
        finally:
            for uri, _ in honored:
                self.watches.unwatch(owner, uri)

    async def _unsubscribe(
        self, ctx: Any, params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        self.watches.unwatch(ctx.session, str(params.uri))
        return types.EmptyResult()
