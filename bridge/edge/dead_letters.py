"""Rejected payloads: counted, logged and (if the route names one) kept in a dead-letter topic.

A front-end that refuses a payload (schema violation, a key that cannot be built) answers the
client in its own protocol and calls :func:`reject_payload` once; the core does the rest the
same way for every protocol. The dead-letter record carries the rejected bytes unchanged plus
reason headers and the usual audit headers, so whoever owns the route can see what was sent,
by whom, and why it was refused.
"""

from __future__ import annotations

import json

import structlog

from bridge.edge.audit import audit_headers, lineage
from bridge.edge.record_builder import UnroutableMessage
from bridge.edge.transform import TransformFailed
from bridge.edge.validation import InvalidPayload
from bridge.kafka.producer import Producer
from bridge.model.config import Route
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message, Origin, Produced
from bridge.telemetry.activity import DEAD_LETTERED, REFUSED
from bridge.telemetry.metrics import DEAD_LETTERS, rejected

log = structlog.get_logger(__name__)

REASON = "edgebridge-dlq-reason"  # schema | transform | unroutable | <front-end's own word>
DETAIL = "edgebridge-dlq-detail"  # one human-readable line
VIOLATIONS = "edgebridge-dlq-violations"  # JSON [{"pointer": ..., "detail": ...}] for schema
ROUTE = "edgebridge-dlq-route"
TOPIC = "edgebridge-dlq-topic"  # where the payload would have gone
ADDRESS = "edgebridge-dlq-address"  # the protocol address it was sent to (MQTT topic, path)


def reason_of(error: Exception) -> str:
    if isinstance(error, InvalidPayload):
        return "schema"
    if isinstance(error, UnroutableMessage):
        return "unroutable"
    return getattr(error, "reason", None) or type(error).__name__


def dead_letter_message(
    route: Route,
    value: bytes | None,
    origin: Origin | None,
    error: Exception,
    address: str | None = None,
    key: bytes | None = None,
) -> Message | None:
    """The dead-letter record for ``value`` refused on ``route`` (None: the route has none)."""
    if route.dead_letter is None:
        return None
    headers: list[tuple[str, bytes]] = [
        (REASON, reason_of(error).encode()),
        (DETAIL, str(error).encode()[:4096]),
        (ROUTE, route.name.encode()),
        (TOPIC, route.topic.encode()),
    ]
    if address is not None:
        headers.append((ADDRESS, address.encode()))
    if isinstance(error, InvalidPayload | TransformFailed) and error.violations:
        violations = [v.as_dict() for v in error.violations]
        headers.append((VIOLATIONS, json.dumps(violations, separators=(",", ":")).encode()))
    headers.extend(audit_headers(route.audit, route.name, origin, *lineage(route)))
    return Message(route.dead_letter, key, value, tuple(headers), origin=origin)


async def reject_payload(
    producer: Producer | None,
    route: Route,
    value: bytes | None,
    origin: Origin,
    error: Exception,
    address: str | None = None,
    key: bytes | None = None,
) -> Produced | None:
    """Count and log a refused payload, and dead-letter it if the route says so.

    Never raises: the client's answer must not depend on whether the dead-letter topic is
    reachable (a failed dead-letter write is logged and the client is refused all the same).
    """
    reason = reason_of(error)
    rejected(origin.protocol, reason)
    REFUSED[route.name] += 1
    log.info(
        "payload.rejected",
        route=route.name,
        protocol=origin.protocol,
        client_id=origin.client_id,
        principal=origin.principal,
        reason=reason,
        detail=str(error)[:500],
    )
    message = dead_letter_message(route, value, origin, error, address, key)
    if message is None or producer is None:
        return None
    try:
        produced = await producer.send(message, route.acks or None)
    except KafkaUnavailable as exc:
        log.warning("dead_letter.failed", route=route.name, topic=route.dead_letter, error=str(exc))
        return None
    DEAD_LETTERS.labels(route.name).inc()
    DEAD_LETTERED[route.name] += 1
    return produced
