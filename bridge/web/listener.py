"""The shared HTTP listener: one server for SSE streams, HTTP routes, MQTT over WebSocket and the
bridge's own pages (and, with the same code, the admin listener).

By default the server is :mod:`bridge.web.server` (our lean HTTP/1.1 + WebSocket server on
httptools and wsproto); with ``http2 = true`` in the listener's options the SAME ASGI app is
served by Hypercorn instead (HTTP/2 over TLS with ALPN, and h2c with prior knowledge).

Front-ends register their ASGI handlers per path template and method with
:meth:`WebListener.route`: one dispatch table (:mod:`bridge.web.dispatch`) decides who answers,
conflicts fail the start, and a known path with another method is a 405 from the table. Paths
nobody registers go to the Quart app (the admin and demo pages, and 404). Timeouts that would cut a long-lived stream are off: Quart's ``RESPONSE_TIMEOUT``
and Hypercorn's ``read_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart, request
from quart import Response as QuartResponse
from werkzeug.exceptions import HTTPException

from bridge.model.config import ListenerSettings
from bridge.web.cors import CorsPolicy, encoded
from bridge.web.direct import DirectHandler
from bridge.web.dispatch import WEBSOCKET, DispatchTable
from bridge.web.http1 import Head
from bridge.web.problem import PROBLEM_TYPE, Problem
from bridge.web.responses import send_whole
from bridge.web.server import HEAD_TIMEOUT_S, KEEP_ALIVE_S, LeanServer
from bridge.web.sockets import LISTEN_BACKLOG, listening_socket

log = structlog.get_logger(__name__)

Scope = dict[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]


GRACEFUL_TIMEOUT_S = 3.0  # open responses get this long to finish when the listener stops


_KINDS = {404: "not-found", 405: "method-not-allowed", 408: "request-timeout", 413: "too-large"}


async def _problem_response(error: HTTPException) -> QuartResponse:
    status = error.code or 500
    problem = Problem(status, _KINDS.get(status, "http-error"), error.description or "")
    response = QuartResponse(problem.body(request.path), status=status, content_type=PROBLEM_TYPE)
    allowed = getattr(error, "valid_methods", None)
    if allowed:
        response.headers["Allow"] = ", ".join(allowed)
    return response


class WebListener:
    def __init__(self, settings: ListenerSettings, name: str = "edgebridge") -> None:
        self.settings = settings
        self.app = Quart(name)
        self.app.config["RESPONSE_TIMEOUT"] = None  # never cut an event stream
        self.app.config["BODY_TIMEOUT"] = 30
        # Unknown paths, wrong methods and the like answer problem+json like every other error,
        # on the client listener and the admin listener alike (Quart's default is an HTML page).
        self.app.register_error_handler(HTTPException, _problem_response)
        # Who answers which path and method: every front-end's handlers, decided in one place.
        self.routes = DispatchTable()
        self.cors = CorsPolicy.of(settings.options.get("cors_origins"))
        self._on_stop: list[Callable[[], object]] = []
        self._socket: socket.socket | None = None
        # Under --workers every process shares `port`; a peer (an instance forwarding a request
        # to this very process) needs an address only this process listens on.
        self._peer_socket: socket.socket | None = None
        self._shutdown = asyncio.Event()
        self._task: asyncio.Task[None] | None = None  # Hypercorn (http2 = true)
        self._lean: LeanServer | None = None
        self.port = settings.port
        self.peer_port = settings.port

    def route(
        self,
        owner: str,
        path: str,
        methods: Sequence[str],
        handler: ASGIApp,
        media: str | None = None,
        direct: DirectHandler | None = None,
    ) -> None:
        """Serve ``methods`` on ``path`` (a template: ``/odds/{match}``) with the ASGI app
        ``handler`` (see :mod:`bridge.web.dispatch`; a conflict raises
        :class:`~bridge.web.dispatch.RouteConflict`). Paths nobody registers go to Quart.
        ``direct``: tried first for a request whose body has fully arrived, on our server
        (not under Hypercorn); see :mod:`bridge.web.direct`."""
        self.routes.add(owner, path, methods, handler, media, direct)

    def direct_for(self, head: Head) -> DirectHandler | None:
        """The direct handler of the entry that answers ``head``, if it has one."""
        found = self.routes.resolve(head.method, head.path, head.headers)
        return found.entry.direct if found is not None and found.entry is not None else None

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when the listener starts to stop, before it waits for open responses:
        long-lived streams end cleanly then (clients resume elsewhere) instead of being cut when
        Hypercorn's graceful timeout runs out."""
        self._on_stop.append(callback)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            method = scope["method"] if kind == "http" else WEBSOCKET
            found = self.routes.resolve(method, scope["path"], scope["headers"])
            if found is not None:
                if found.entry is not None:
                    await found.entry.handler(scope, receive, send)
                    return
                if kind == "http":
                    await self._not_allowed(scope, send, found.allow)
                    return
        await self.app(scope, receive, send)  # type: ignore[arg-type]

    async def _not_allowed(self, scope: Scope, send: Any, allow: tuple[str, ...]) -> None:
        """405 from the table: every method the path's owners take, in ``Allow``."""
        allowed = ", ".join(allow)
        problem = Problem(
            405,
            "method-not-allowed",
            f"{scope['method']} is not allowed on {scope['path']}; allowed: {allowed}",
            headers={"allow": allowed},
        )
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        body = problem.body(scope["path"])
        headers = [
            (b"content-type", PROBLEM_TYPE.encode()),
            (b"allow", allowed.encode()),
            *encoded(self.cors.response_headers(origin)),
        ]
        log.info("http.refused", method=scope["method"], path=scope["path"], status=405)
        head = scope["method"] == "HEAD"
        await send_whole(send, 405, b"" if head else body, headers, length=len(body))

    def bind(self, reuse_port: bool = False) -> None:
        """Bind the listening socket(s) now, so :attr:`port` and :attr:`peer_port` are known
        before front-ends start (connections wait in the backlog until :meth:`start`)."""
        if self._socket is not None:
            return
        self._socket = listening_socket(self.settings.host, self.settings.port, reuse_port)
        self.port = self.peer_port = self._socket.getsockname()[1]
        if reuse_port:
            self._peer_socket = listening_socket(self.settings.host, 0)
            self.peer_port = self._peer_socket.getsockname()[1]

    def _ssl_context(self) -> ssl.SSLContext | None:
        options = self.settings.options
        cert, key = options.get("tls_cert"), options.get("tls_key")
        if not (cert and key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        context.set_alpn_protocols(["http/1.1"])
        return context

    async def start(self, reuse_port: bool = False) -> None:
        self.bind(reuse_port)
        assert self._socket is not None
        if self.settings.options.get("http2"):
            await self._start_hypercorn()
        else:
            options = self.settings.options
            self._lean = LeanServer(
                self,
                ssl_context=self._ssl_context(),
                keep_alive_s=float(options.get("keep_alive_s", KEEP_ALIVE_S)),
                head_timeout_s=float(options.get("head_timeout_s", HEAD_TIMEOUT_S)),
                direct=self.direct_for,
            )
            sockets = [s for s in (self._socket, self._peer_socket) if s is not None]
            await self._lean.start(sockets, LISTEN_BACKLOG)
        log.info("listener.started", protocol="http", host=self.settings.host, port=self.port)

    async def _start_hypercorn(self) -> None:
        assert self._socket is not None
        config = HypercornConfig()
        config.bind = [f"fd://{self._socket.fileno()}"]
        if self._peer_socket is not None:
            config.bind.append(f"fd://{self._peer_socket.fileno()}")
        config.backlog = LISTEN_BACKLOG  # Hypercorn re-listens with this (default 100)
        config.read_timeout = None
        config.keep_alive_timeout = KEEP_ALIVE_S
        config.graceful_timeout = GRACEFUL_TIMEOUT_S
        config.accesslog = None
        config.errorlog = None
        config.h2_max_concurrent_streams = 1000
        tls = self.settings.options
        if tls.get("tls_cert") and tls.get("tls_key"):
            config.certfile = str(tls["tls_cert"])
            config.keyfile = str(tls["tls_key"])
        started = asyncio.Event()

        async def run() -> None:
            started.set()
            await serve(self, config, shutdown_trigger=self._shutdown.wait, mode="asgi")  # type: ignore[arg-type]

        self._task = asyncio.create_task(run(), name="web-listener")
        await started.wait()
        await asyncio.sleep(0)

    @property
    def direct_taken(self) -> int:
        """Requests a direct handler answered (bridge/web/direct.py); 0 under Hypercorn."""
        return self._lean.state.direct_taken if self._lean is not None else 0

    @property
    def serving(self) -> bool:
        """Started and not stopped (for readiness)."""
        if self._lean is not None:
            return self._lean.serving
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        for callback in self._on_stop:
            try:
                callback()
            except Exception:
                log.exception("listener.on_stop_failed")
        self._shutdown.set()
        if self._lean is not None:
            await self._lean.drain(GRACEFUL_TIMEOUT_S)
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception as exc:
                # Hypercorn 0.18 raises InvalidStateError when a connection outlives its graceful
                # timeout (a client that stopped reading); the rest of the bridge must still stop.
                log.warning("listener.stop_incomplete", error=repr(exc))
        for sock in (self._socket, self._peer_socket):
            if sock is not None:
                with contextlib.suppress(OSError):  # Hypercorn may have closed it already
                    sock.close()
