"""``GET /catalog``: the data products with their live health (issue 16 item 4).

The static part of each product (description, owner, tags, version, schema, addresses per
protocol with MCP tools and gRPC methods, access roles, jurisdiction) is
:func:`bridge.model.products.product_entry`, the same entry the API documents carry. This adds,
per product, what this process sees of it now:

* ``last_record_at``: the Kafka timestamp of the newest record of its topic;
* ``records_per_s``: records of its topic per second over the last minute (by Kafka timestamp);
* ``subscribers``: live subscriptions on its topic in this process (SSE, MQTT, gRPC, MCP);
* ``refused`` / ``dead_letters``: payloads refused on this route, and those kept in its
  dead-letter topic;
* ``consumer_lag``: records Kafka holds that the hub's feed of the topic has not read yet.

Figures are per topic where products share one (``scores`` and ``all-scores``) and per process
(with ``--workers N`` each worker answers for itself). The hub follows a topic only while someone
reads it, so the first request follows every product's topic (a bounded set: the route table's);
a topic read from its live end knows no record older than that (``watched_since``).

Who may read it: ``[listeners.http] catalog_roles`` (default ``["authenticated"]``: any valid
token), since owners, refusals and traffic figures are operational detail; ``["anonymous"]``
makes it public, as it is by default without a ``[guard]`` (every caller is anonymous then). Refusals are problem+json (401 with ``WWW-Authenticate``, 403), as every route.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge.edge.access import Principal
from bridge.edge.credentials import www_authenticate
from bridge.model.config import ANONYMOUS_ROLE, AUTHENTICATED_ROLE, Config
from bridge.model.products import product_entry
from bridge.telemetry import metrics
from bridge.telemetry.activity import DEAD_LETTERED, REFUSED
from bridge.web.cors import CorsPolicy, encoded
from bridge.web.problem import PROBLEM_TYPE, Problem, authenticate
from bridge.web.responses import send_whole

log = structlog.get_logger(__name__)

CATALOG_PATH = "/catalog"
DEFAULT_ROLES = (AUTHENTICATED_ROLE,)
FEED_WAIT_S = 5.0  # a topic the hub cannot follow within this is reported "unavailable"
PROTOCOL = "http"


def catalog_roles(config: Config) -> tuple[str, ...]:
    """Who may read the catalog: as configured; by default any valid token, or anyone when
    there is no [guard] (every caller is anonymous then: a token could not be presented)."""
    listener = config.http_listener
    roles = listener.options.get("catalog_roles") if listener is not None else None
    if roles is not None:
        return tuple(roles)
    return DEFAULT_ROLES if config.guard_settings is not None else (ANONYMOUS_ROLE,)


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


async def topic_health(hub: Any, topics: list[str]) -> dict[str, dict[str, Any]]:
    """The live figures of each topic, following the ones the hub does not follow yet."""
    now = time.time()

    async def one(topic: str) -> tuple[str, dict[str, Any]]:
        if hub is None:
            return topic, {"status": "unavailable", "detail": "Kafka is not connected"}
        try:
            feed = await asyncio.wait_for(hub.feed(topic), FEED_WAIT_S)
        except (
            Exception
        ) as exc:  # Kafka away, topic missing: a product is unavailable, not /catalog
            return topic, {"status": "unavailable", "detail": str(exc)[:300]}
        activity = feed.activity
        last_s = activity.last_ms / 1000 if activity.last_ms is not None else None
        rate = activity.per_second(now)
        return topic, {
            "status": "live" if rate > 0 else "idle",
            "last_record_at": _iso(last_s),
            "last_record_age_s": round(max(now - last_s, 0.0), 3) if last_s is not None else None,
            "records_per_s": round(rate, 4),
            "records_seen": activity.total,
            "subscribers": feed.subscriber_count,
            "consumer_lag": feed.consumer_lag(),
            "watched_since": _iso(feed.started_at),
        }

    return dict(await asyncio.gather(*(one(topic) for topic in dict.fromkeys(topics))))


async def live_catalog(config: Config, hub: Any) -> dict[str, Any]:
    """The catalog document: every product with its health."""
    health = await topic_health(hub, [route.topic for route in config.routes])
    products = []
    for route in config.routes:
        entry = product_entry(config, route)
        entry["health"] = {
            **health[route.topic],
            "refused": REFUSED[route.name],
            "dead_letters": DEAD_LETTERED[route.name],
        }
        products.append(entry)
    return {
        "bridge": config.bridge_name,
        "region": config.region,
        "generated_at": _iso(time.time()),
        "window_s": 60,
        "products": products,
    }


def check_access(principal: Principal, roles: tuple[str, ...]) -> None:
    """Raise the 401/403 problem when ``principal`` may not read the catalog."""
    if ANONYMOUS_ROLE in roles:
        return
    if not principal.authenticated:
        raise Problem(
            401,
            "unauthenticated",
            "the catalog requires a token",
            headers={"www-authenticate": www_authenticate()},
        )
    if AUTHENTICATED_ROLE in roles or principal.roles.intersection(roles):
        return
    raise Problem(
        403, "forbidden", f"the catalog requires one of the roles: {', '.join(sorted(roles))}"
    )


class ProductCollector:
    """The catalog's live figures for Prometheus, per product, computed at scrape time from the
    hub feeds already open (a scrape never opens one: /catalog, or any reader, does)."""

    def __init__(self) -> None:
        self.sources: weakref.WeakSet[Any] = weakref.WeakSet()  # running bridges

    def collect(self) -> Iterator[Metric]:
        rate = GaugeMetricFamily(
            "edgebridge_product_records_per_second",
            "Records of the product's topic per second over the last minute (Kafka timestamps).",
            labels=["product"],
        )
        last = GaugeMetricFamily(
            "edgebridge_product_last_record_timestamp_seconds",
            "Kafka timestamp of the newest record of the product's topic.",
            labels=["product"],
        )
        subscribers = GaugeMetricFamily(
            "edgebridge_product_subscribers",
            "Live subscriptions on the product's topic in this process.",
            labels=["product"],
        )
        lag = GaugeMetricFamily(
            "edgebridge_product_consumer_lag",
            "Records of the product's topic the hub has not read yet.",
            labels=["product"],
        )
        refused = CounterMetricFamily(
            "edgebridge_product_refused",
            "Payloads refused on the product's route (schema, unroutable...).",
            labels=["product"],
        )
        seen: set[str] = set()
        for bridge in list(self.sources):
            hub = getattr(bridge, "hub", None)
            feeds = hub.feeds() if hub is not None else {}
            for route in bridge.config.routes:
                if route.name in seen:
                    continue  # several bridges in one process (tests): the first one's
                seen.add(route.name)
                refused.add_metric([route.name], REFUSED[route.name])
                feed = feeds.get(route.topic)
                if feed is None:
                    continue
                rate.add_metric([route.name], feed.activity.per_second())
                if feed.activity.last_ms is not None:
                    last.add_metric([route.name], feed.activity.last_ms / 1000)
                subscribers.add_metric([route.name], feed.subscriber_count)
                behind = feed.consumer_lag()
                if behind is not None:
                    lag.add_metric([route.name], behind)
        yield from (rate, last, subscribers, lag, refused)


PRODUCTS = ProductCollector()


class CatalogEndpoint:
    """The ASGI handler of ``/catalog`` on the shared HTTP listener."""

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        config: Config = bridge.config
        listener = config.http_listener
        self.cors = CorsPolicy.of(listener.options.get("cors_origins") if listener else None)
        self.roles = catalog_roles(config)
        PRODUCTS.sources.add(bridge)
        metrics.register_computed(PRODUCTS)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        method = scope["method"]
        if method == "OPTIONS":
            cors = self.cors.preflight_headers(origin, ["GET", "HEAD", "OPTIONS"])
            await send_whole(send, 204, b"", [*encoded(cors), (b"allow", b"GET, HEAD, OPTIONS")])
            return
        cors_headers = encoded(self.cors.response_headers(origin))
        try:
            if method not in ("GET", "HEAD"):
                raise Problem(
                    405, "method-not-allowed", "GET only", headers={"allow": "GET, HEAD, OPTIONS"}
                )
            principal = self.principal(headers.get("authorization"), scope["query_string"])
            self.check(principal)
            document = await live_catalog(self.bridge.config, self.bridge.hub)
        except Problem as problem:
            if problem.status in (401, 403):
                metrics.rejected(PROTOCOL, "forbidden" if problem.status == 403 else "no_token")
            log.info("catalog.refused", status=problem.status, detail=problem.detail)
            body = problem.body(CATALOG_PATH)
            extra = [(k.encode(), v.encode()) for k, v in problem.headers.items()]
            await send_whole(
                send,
                problem.status,
                body,
                [(b"content-type", PROBLEM_TYPE.encode()), *extra, *cors_headers],
            )
            return
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        await send_whole(
            send,
            200,
            b"" if method == "HEAD" else body,
            [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-store"),  # live figures: never from a cache
                *cors_headers,
            ],
            length=len(body),
        )

    def check(self, principal: Principal) -> None:
        check_access(principal, self.roles)

    def principal(self, authorization: str | None, query_string: bytes) -> Principal:
        return authenticate(self.bridge.guard, authorization, query_string, PROTOCOL)
