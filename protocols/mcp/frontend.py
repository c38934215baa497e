"""The MCP front-end on the shared HTTP listener: Streamable HTTP at ``/mcp`` (the SDK's transport
and session manager), behind a bearer-token check through the bridge's guard.

MCP's authorization model makes the server an OAuth 2.1 *resource server*: it publishes protected
resource metadata (RFC 9728) at ``/.well-known/oauth-protected-resource`` and answers a request
without a usable token ``401`` with ``WWW-Authenticate: Bearer resource_metadata="…"``, so a host
can discover where to get one. Tokens are the same JWTs every other front-end takes.

Registered in the listener's dispatch table (``WebListener.route``) like every front-end.

Settings (``[listeners.http]``): ``mcp_path`` (default ``/mcp``; ``false``: off),
``mcp_rate_per_s`` and ``mcp_burst`` (the per-identity rate limit, default 10/s, 20 at once),
``mcp_idempotency_topic`` (the ledger of publish tools' idempotency keys); ``advertise`` and
``idempotency_session_timeout_ms`` as for HTTP's ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from bridge.edge.access import ANONYMOUS
from bridge.edge.guard import AuthError
from bridge.edge.idempotency import IdempotencyStore
from bridge.kafka.hub import Hub
from bridge.kafka.replies import ReplyFollower
from bridge.model import strict_json
from bridge.model.advertise import advertised_address
from bridge.model.config import Route, TopicSpec
from bridge.model.products import mcp_path, publish_idempotency, request_reply
from bridge.process.runtime import Bridge
from bridge.telemetry import metrics
from protocols.mcp.idempotency import (
    DEFAULT_LEDGER_TOPIC,
    FORWARDED_HEADER,
    Forward,
    McpLedger,
    forward_call,
    ledger_topic_spec,
    rebuild,
)
from protocols.mcp.operations import PROTOCOL, SCOPE_PRINCIPAL, Operations, RateLimiter
from protocols.mcp.resources import Watches

if TYPE_CHECKING:
    from protocols.mcp.server import McpService

log = structlog.get_logger(__name__)

METADATA_PATH = "/.well-known/oauth-protected-resource"
DEFAULT_RATE_PER_S = 10.0
DEFAULT_BURST = 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SCOPE_BEARER = "edgebridge.mcp.bearer"  # the caller's token, for a forward to a key's owner
SCOPE_FORWARDED = "edgebridge.mcp.forwarded"  # the call came from another instance
DEFAULT_SESSION_TIMEOUT_MS = 6000


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _bearer(scope: dict[str, Any]) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


MAX_BODY_BYTES = 4 * 1024 * 1024  # the SDK's own limit for a request body


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body (None if it is larger than ``limit``)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, original: Any) -> Any:
    """An ASGI ``receive`` that hands ``body`` over again, then is the real one (which reports
    the client's disconnect)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await original()
        return message

    return receive


def _rpc_error(code: int, message: str, pointer: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if pointer:
        error["data"] = {"pointer": pointer}
    return {"jsonrpc": "2.0", "id": None, "error": error}


def reply_topic_specs(routes: Iterable[Route]) -> list[TopicSpec]:
    """The reply topics of request-reply routes (created at start, as HTTP's front-end does)."""
    topics = {e.reply_topic for e in map(request_reply, routes) if e is not None}
    return [TopicSpec(topic) for topic in sorted(topics)]


async def start_followers(hub: Hub, routes: Iterable[Route]) -> dict[str, ReplyFollower]:
    """A follower per reply topic of the request-reply routes (shared by their publish tools)."""
    followers: dict[str, ReplyFollower] = {}
    for route in routes:
        exchanged = request_reply(route)
        if exchanged is not None and exchanged.reply_topic not in followers:
            follower = ReplyFollower(hub, exchanged.reply_topic)
            await follower.start()
            followers[exchanged.reply_topic] = follower
    return followers


class McpFrontend:
    name = "mcp"

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        listener = bridge.config.http_listener
        options = dict(listener.options) if listener is not None else {}
        self.path = mcp_path(bridge.config)
        self.rate = float(options.get("mcp_rate_per_s", DEFAULT_RATE_PER_S))
        self.burst = int(options.get("mcp_burst", DEFAULT_BURST))
        self.options = options
        self.ledger_topic = str(options.get("mcp_idempotency_topic", DEFAULT_LEDGER_TOPIC))
        self.ledger: McpLedger | None = None
        self.followers: dict[str, ReplyFollower] = {}
        self.address = ""
        self.service: McpService | None = None
        self.stateless = False
        self.app: Any = None
        self._manager_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _idempotent(self) -> bool:
        return self.path is not None and any(
            publish_idempotency(r) != "off" for r in self.bridge.routes.routes
        )

    def topics(self) -> list[TopicSpec]:
        specs = [ledger_topic_spec(self.ledger_topic)] if self._idempotent() else []
        return specs + reply_topic_specs(self.bridge.routes.routes) if self.path else specs

    async def start(self) -> None:
        web = self.bridge.web
        if web is None or self.path is None:
            return
        # The SDK (and its pydantic models, ~25 MiB and ~0.6 s per process) is imported only
        # when MCP is on.
        from mcp.server.transport_security import TransportSecuritySettings

        from protocols.mcp.server import McpService

        producer, hub = self.bridge.kafka
        # Under `run --workers N` the kernel spreads connections over processes that share the
        # port, and an MCP session lives in one process's memory: a session's next request (or
        # its notification stream) would find another worker that never heard of it. There,
        # every request stands alone (the SDK's stateless mode): tools work the same, resource
        # subscriptions are not offered.
        self.stateless = self.bridge.reuse_port
        self.address = advertised_address(
            str(self.options.get("advertise") or ""), web.settings.host, web.peer_port
        )
        ledger = None
        if self._idempotent():
            timeout_ms = self.options.get(
                "idempotency_session_timeout_ms", DEFAULT_SESSION_TIMEOUT_MS
            )
            store = IdempotencyStore(
                producer,
                self.bridge.config.kafka,
                self.bridge.bootstrap,
                self.address,
                rebuild,
                self.ledger_topic,
                session_timeout_ms=int(timeout_ms),
            )
            ledger = self.ledger = McpLedger(store)  # joins its group on the first keyed call
        self.followers = await start_followers(hub, self.bridge.routes.routes)
        self.service = McpService(
            self.bridge.config,
            self.bridge.routes.routes,
            Operations(
                self.bridge.config,
                producer,
                hub,
                ledger,
                listener="http",
                followers=self.followers,
            ),
            RateLimiter(self.rate, self.burst),
            Watches(hub),
            subscriptions=not self.stateless,
            forward_of=self._forward_of,
            listener="http",  # a caller without a region claim has the HTTP listener's region
        )
        host = web.settings.host
        # On a loopback listener only loopback Host/Origin headers are accepted, so a web page
        # cannot reach a local bridge through a rebound DNS name; a public listener is reached
        # by whatever names its clients use, so no allow-list is assumed there.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        if host in LOOPBACK:
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        self.app = self.service.server.streamable_http_app(
            streamable_http_path=self.path,
            transport_security=security,
            host=host,
            json_response=True,
            stateless_http=self.stateless,
        )
        manager = self.service.server.session_manager
        started = asyncio.Event()

        async def run_manager() -> None:
            async with manager.run():
                started.set()
                await self._stop.wait()

        self._manager_task = asyncio.create_task(run_manager(), name="mcp-sessions")
        await started.wait()
        for path in (self.path, self.path.rstrip("/") + "/"):
            # GET is the SDK's event stream: an SSE route on this path would be a conflict.
            web.route("MCP", path, ("GET",), self.handle, media="text/event-stream")
            web.route("MCP", path, ("POST", "DELETE", "OPTIONS"), self.handle)
        for path in (METADATA_PATH, METADATA_PATH + "/{resource...}"):
            web.route("MCP resource metadata", path, ("GET", "HEAD", "OPTIONS"), self.handle)
        log.info("mcp.started", path=self.path, stateless=self.stateless)

    def _forward_of(self, ctx: Any, tool: str, arguments: dict[str, Any]) -> Forward | None:
        request = getattr(ctx, "request", None)
        scope = getattr(request, "scope", None)
        if not isinstance(scope, dict) or scope.get(SCOPE_FORWARDED) or self.path is None:
            return None  # forwarded once already: never twice
        bearer = scope.get(SCOPE_BEARER)
        path = self.path
        timeout_s = 3 * self.bridge.kafka[0].timeout_s

        async def forward(address: str) -> tuple[dict[str, Any], bool]:
            return await forward_call(
                address, path, tool, arguments, bearer, self.address, timeout_s
            )

        return forward

    async def stop(self) -> None:
        self._stop.set()
        if self.service is not None:
            await self.service.watches.close()
        if self.ledger is not None:
            await self.ledger.stop()
        for follower in self.followers.values():
            follower.stop()
        if self._manager_task is not None:
            try:
                await asyncio.wait_for(self._manager_task, 5)
            except (TimeoutError, Exception):
                self._manager_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._manager_task

    # -- HTTP -----------------------------------------------------------------------------------

    def _resource_url(self, scope: dict[str, Any]) -> str:
        host = _header(scope, b"host") or ""
        return f"{scope.get('scheme', 'http')}://{host}{self.path}"

    def _metadata_url(self, scope: dict[str, Any]) -> str:
        host = _header(scope, b"host") or ""
        return f"{scope.get('scheme', 'http')}://{host}{METADATA_PATH}{self.path}"

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].startswith(METADATA_PATH):
            await self._metadata(scope, send)
            return
        guard = self.bridge.guard
        principal = ANONYMOUS
        if guard.enabled:
            token = _bearer(scope)
            challenge = f'Bearer resource_metadata="{self._metadata_url(scope)}"'
            if not token:
                metrics.rejected(PROTOCOL, "token_missing")
                log.info("mcp.unauthenticated", reason="missing", client=scope.get("client"))
                await _send_json(
                    send,
                    401,
                    {"error": "invalid_request", "error_description": "a bearer token is required"},
                    [(b"www-authenticate", challenge.encode())],
                )
                return
            try:
                principal = guard.authenticate(token)
            except AuthError as exc:
                metrics.auth_rejected(PROTOCOL, exc)
                log.info("mcp.unauthenticated", reason=exc.reason, client=scope.get("client"))
                detail = exc.detail.replace('"', "'")
                value = f'Bearer error="invalid_token", error_description="{detail}", ' + (
                    f'resource_metadata="{self._metadata_url(scope)}"'
                )
                await _send_json(
                    send,
                    401,
                    {"error": "invalid_token", "error_description": exc.detail},
                    [(b"www-authenticate", value.encode())],
                )
                return
        scope[SCOPE_PRINCIPAL] = principal
        scope[SCOPE_BEARER] = _bearer(scope) if guard.enabled else None
        scope[SCOPE_FORWARDED] = _header(scope, FORWARDED_HEADER.encode()) is not None
        if scope["method"] == "POST":
            body = await _read_body(receive, MAX_BODY_BYTES)
            if body is None:
                await _send_json(send, 413, _rpc_error(-32600, "the request is too large"), [])
                return
            try:
                strict_json.loads(body)
            except strict_json.StrictJsonError as exc:
                # The SDK's parser lets NaN and duplicate members through (the last one wins),
                # so a bet's amount could silently be another than the one an audit shows.
                metrics.rejected(PROTOCOL, "invalid_json")
                log.info("mcp.invalid_json", pointer=exc.pointer, detail=exc.detail)
                code = -32700 if not exc.pointer else -32602  # parse error / invalid params
                await _send_json(send, 400, _rpc_error(code, str(exc), exc.pointer), [])
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _metadata(self, scope: dict[str, Any], send: Any) -> None:
        """RFC 9728 protected-resource metadata (at the well-known path, and with the resource's
        path appended, as hosts try both)."""
        if scope["method"] not in ("GET", "HEAD"):
            await _send_json(send, 405, {"error": "method not allowed"}, [(b"allow", b"GET")])
            return
        settings = self.bridge.guard.settings
        document: dict[str, Any] = {
            "resource": self._resource_url(scope),
            "bearer_methods_supported": ["header"],
            "resource_name": self.bridge.config.bridge_name,
        }
        if settings is not None and settings.issuer:
            document["authorization_servers"] = list(settings.issuer)
        if settings is not None:
            document["resource_signing_alg_values_supported"] = list(settings.algorithms)
        await _send_json(send, 200, document, [])
