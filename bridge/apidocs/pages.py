"""Serves ``/asyncapi.json``, ``/openapi.json``, ``/docs`` and ``/catalog`` on the shared HTTP
listener.

Registered like a front-end (entry point ``docs`` in ``edgebridge.frontends``) so that
``edgebridge run`` serves them without the runtime knowing; it speaks no protocol of its own.
The documents are built once at start: routing.toml does not change while the bridge runs.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from bridge.apidocs.asyncapi import asyncapi_document
from bridge.apidocs.catalog import CATALOG_PATH, CatalogEndpoint, live_catalog
from bridge.apidocs.docs_page import docs_html
from bridge.apidocs.openapi import openapi_document
from bridge.model.config import TopicSpec
from bridge.web.problem import Problem
from bridge.web.responses import send_whole

log = structlog.get_logger(__name__)


class ApiDocs:
    name = "docs"

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        self.pages: dict[str, tuple[bytes, bytes]] = {}
        self.documents: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.catalog: CatalogEndpoint | None = None

    def topics(self) -> list[TopicSpec]:
        return []

    async def start(self) -> None:
        web = self.bridge.web
        if web is None:
            return
        config = self.bridge.config
        try:
            # Public pages: the Kafka address behind the bridge is internal unless the operator
            # says otherwise ([bridge] docs_show_kafka).
            show = bool(config.raw.get("bridge", {}).get("docs_show_kafka", False))
            asyncapi = asyncapi_document(
                config, self.bridge.bootstrap or None, show_kafka_address=show
            )
            openapi = openapi_document(config)
        except Exception:
            # Documentation must never keep the bridge from serving traffic.
            log.exception("docs.unavailable")
            return
        self.documents = (asyncapi, openapi)
        self.pages = {
            "/asyncapi.json": (b"application/json", _json(asyncapi)),
            "/openapi.json": (b"application/json", _json(openapi)),
            "/docs": (b"text/html; charset=utf-8", docs_html(asyncapi, openapi).encode()),
        }
        self.pages["/docs/"] = self.pages["/docs"]
        for path in list(self.pages):
            if _routed(config, path):
                # A route owns this path: the operator's routing.toml wins over our pages.
                del self.pages[path]
                log.warning("docs.path_taken", path=path, detail="served by a route instead")
        for path in self.pages:
            web.route(f"page {path}", path, ("GET", "HEAD"), self.serve)
        if _routed(config, CATALOG_PATH):
            log.warning("docs.path_taken", path=CATALOG_PATH, detail="served by a route instead")
        else:
            # The data products with their live health (bridge/apidocs/catalog.py).
            catalog = self.catalog = CatalogEndpoint(self.bridge)
            web.route("the catalog", CATALOG_PATH, ("GET", "HEAD", "OPTIONS"), catalog)

    async def stop(self) -> None:
        return None

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        content_type, body = self.pages[scope["path"]]
        live = await self._live_docs(scope)
        if live is not None:
            body = live
            await send_whole(
                send,
                200,
                b"" if scope["method"] == "HEAD" else body,
                # the caller's own view, with live figures
                [(b"content-type", content_type), (b"cache-control", b"no-store")],
                length=len(body),
            )
            return
        await send_whole(
            send,
            200,
            b"" if scope["method"] == "HEAD" else body,
            [
                (b"content-type", content_type),
                (b"access-control-allow-origin", b"*"),
                (b"cache-control", b"no-cache"),
            ],
            length=len(body),
        )

    async def _live_docs(self, scope: dict[str, Any]) -> bytes | None:
        """/docs with each product's live health, for a caller who may read /catalog (its
        token in ``?access_token=`` or Authorization; the public page for anyone else)."""
        if not scope["path"].startswith("/docs") or self.catalog is None or not self.documents:
            return None
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        try:
            principal = self.catalog.principal(authorization, scope["query_string"])
            self.catalog.check(principal)
        except Problem:
            return None
        live = await live_catalog(self.bridge.config, self.bridge.hub)
        return docs_html(*self.documents, live=live).encode()


def _routed(config: Any, path: str) -> bool:
    templates = [binding.template for route in config.routes for binding in route.http]
    templates += [route.sse.template for route in config.routes if route.sse is not None]
    return any(template.match(path) is not None for template in templates)


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()
