"""Prometheus metrics: module-level metric objects that every part of the bridge increments.

Front-ends import this module and call the small helpers below (or the metric objects
directly); the admin listener (:mod:`bridge.web.admin_listener`) serves them on ``/metrics``.
Names and labels are documented in docs/operations.md.

With ``--workers N`` every worker is its own process: the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before starting them, prometheus-client then keeps each metric in a
memory-mapped file per process, and :func:`exposition` adds them up, so a scrape that lands on
any worker sees the whole instance.

Hot paths: ``.labels(...)`` costs a dict lookup and a lock. A front-end fanning one record out
to many clients should count the deliveries and call :func:`message_out` once per record with
``count``, or keep the labelled child (``MESSAGES_OUT.labels(route, protocol)``) around.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTIONS = Gauge(
    "edgebridge_connections",
    "Client connections open now (MQTT connections, SSE streams, WebSockets).",
    ["protocol"],
    multiprocess_mode="livesum",
)
CONNECTIONS_OPENED = Counter(
    "edgebridge_connections_opened", "Client connections accepted.", ["protocol"]
)
MESSAGES_IN = Counter(
    "edgebridge_messages_in",
    "Messages from clients that Kafka acknowledged.",
    ["route", "protocol"],
)
BYTES_IN = Counter("edgebridge_bytes_in", "Payload bytes of messages_in.", ["route", "protocol"])
MESSAGES_OUT = Counter(
    "edgebridge_messages_out",
    "Messages delivered to clients (one per client per record).",
    ["route", "protocol"],
)
BYTES_OUT = Counter("edgebridge_bytes_out", "Payload bytes of messages_out.", ["route", "protocol"])
REJECTIONS = Counter(
    "edgebridge_rejections",
    "Requests, messages or connections refused, by reason (token_expired, forbidden, schema...).",
    ["protocol", "reason"],
)
DEAD_LETTERS = Counter(
    "edgebridge_dead_letters",
    "Rejected payloads written to a route's dead-letter topic.",
    ["route"],
)
TRANSFORM_FAILURES = Counter(
    "edgebridge_transform_failures",
    "Records a route's transform could not handle: inbound (refused and dead-lettered) or "
    "outbound (withheld from a subscriber whose view could not be made).",
    ["route", "direction"],
)
KAFKA_PRODUCE_SECONDS = Histogram(
    "edgebridge_kafka_produce_seconds",
    "Time from handing a record to the producer to Kafka's acknowledgement.",
    ["acks"],
    buckets=_LATENCY_BUCKETS,
)
FANOUT_LAG_SECONDS = Histogram(
    "edgebridge_fanout_lag_seconds",
    "Age of a live record (now minus its Kafka timestamp) when the hub hands it to subscribers.",
    ["topic"],
    buckets=_LATENCY_BUCKETS,
)
STREAM_RESETS = Counter(
    "edgebridge_stream_resets",
    "A hub feed started its topic again: reason=reset (a new incarnation: recreated topic or "
    "replaced broker), truncated (records deleted before they were read), deleted (topic gone).",
    ["topic", "reason"],
)
RESUMES_TRUNCATED = Counter(
    "edgebridge_resume_truncated",
    "A subscription resumed from a position below the log start (retention deleted records it "
    "had not read): it was told (SSE reset event, MQTT 5 user property) and went on from what is left.",
    ["topic"],
)
RESUMES_RESET = Counter(
    "edgebridge_resume_reset",
    "A subscription resumed from a position of another incarnation of its topic (recreated, or "
    "the broker replaced): it was told (MQTT 5 user property) and read the new one from its start.",
    ["topic", "protocol"],
)
SLOW_CLIENT_DISCONNECTS = Counter(
    "edgebridge_slow_client_disconnects",
    "Clients closed because their send buffer overflowed (they resume by position).",
    ["protocol"],
)
SESSIONS_RESUMED = Counter(
    "edgebridge_sessions_resumed",
    "Clients that resumed where they left off (SSE Last-Event-ID, MQTT persistent session).",
    ["protocol"],
)

OWNED_KEYS = Gauge(
    "edgebridge_owned_table_keys",
    "Keys this instance holds of a partition-owned table (its share of the idempotency ledger).",
    ["topic"],
    multiprocess_mode="livesum",
)
OWNED_PARTITIONS = Gauge(
    "edgebridge_owned_table_partitions",
    "Partitions of a partition-owned table this instance owns and has loaded.",
    ["topic"],
    multiprocess_mode="livesum",
)
BRIDGE_STARTS = Counter(
    "edgebridge_bridge_starts",
    "Bridge processes started; with --workers a restarted worker counts again.",
)
MCP_TOOL_CALLS = Counter(
    "edgebridge_mcp_tool_calls",
    "MCP tool calls by tool kind, route and outcome (ok, or the tool error's kind).",
    ["kind", "route", "outcome"],
)


# -- helpers front-ends call --------------------------------------------------------------------


def message_in(route: str, protocol: str, payload_bytes: int) -> None:
    """One client message acknowledged by Kafka."""
    MESSAGES_IN.labels(route, protocol).inc()
    BYTES_IN.labels(route, protocol).inc(payload_bytes)


class Inbound:
    """The two counters :func:`message_in` bumps, with their label children looked up once: a
    hot path (one HTTP request per record) keeps one per route instead of paying ``labels()``."""

    __slots__ = ("_bytes", "_messages")

    def __init__(self, route: str, protocol: str) -> None:
        self._messages = MESSAGES_IN.labels(route, protocol)
        self._bytes = BYTES_IN.labels(route, protocol)

    def add(self, payload_bytes: int) -> None:
        self._messages.inc()
        self._bytes.inc(payload_bytes)


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(value)`` for every value, with one locked add per bucket touched.

    ``observe`` takes two locks per value (the sum, then its bucket): a produce batch settling
    thousands of records spent ~10 % of the bridge's ingest CPU there. ``histogram`` is a
    labelled child; this reads prometheus-client's own bucket bounds and values, the same
    fields ``observe`` uses (tests/bridge/test_metrics.py checks the two agree).
    """
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe picks
        total += value
    if not any(counts):
        return
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


def message_out(route: str, protocol: str, payload_bytes: int, count: int = 1) -> None:
    """``count`` deliveries of one record of ``payload_bytes`` to clients."""
    MESSAGES_OUT.labels(route, protocol).inc(count)
    BYTES_OUT.labels(route, protocol).inc(payload_bytes * count)


def rejected(protocol: str, reason: str) -> None:
    """A refusal; ``reason`` is a short stable word (see docs/operations.md)."""
    REJECTIONS.labels(protocol, reason).inc()


def transform_failed(route: str, direction: str) -> None:
    TRANSFORM_FAILURES.labels(route, direction).inc()


def auth_rejected(protocol: str, error: Exception) -> None:
    """A token refused by the guard: reason ``token_<AuthError.reason>``."""
    rejected(protocol, f"token_{getattr(error, 'reason', 'invalid')}")


def connection_opened(protocol: str) -> None:
    CONNECTIONS.labels(protocol).inc()
    CONNECTIONS_OPENED.labels(protocol).inc()


def connection_closed(protocol: str) -> None:
    CONNECTIONS.labels(protocol).dec()


@contextmanager
def connection(protocol: str) -> Iterator[None]:
    """Count a connection open for the duration of the block."""
    connection_opened(protocol)
    try:
        yield
    finally:
        connection_closed(protocol)


def slow_client_disconnected(protocol: str) -> None:
    SLOW_CLIENT_DISCONNECTS.labels(protocol).inc()


def session_resumed(protocol: str) -> None:
    SESSIONS_RESUMED.labels(protocol).inc()


# -- exposition ---------------------------------------------------------------------------------


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


_COMPUTED: list[Collector] = []  # figures computed when scraped (the catalog's, per product)


def register_computed(collector: Collector) -> None:
    """Add a collector whose figures are computed at scrape time from live state (not summed
    over workers: under --workers N a scrape shows the answering worker's own)."""
    if collector not in _COMPUTED:
        _COMPUTED.append(collector)
        REGISTRY.register(collector)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (summed over workers) and its content type."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        for collector in _COMPUTED:
            registry.register(collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int, directory: str | None = None) -> None:
    """Forget a dead worker's live gauges (its counters stay: totals never go backwards)."""
    directory = directory or os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)
