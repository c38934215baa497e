"""RFC 9457 problem details: every HTTP error the bridge answers, in one format, from one place.

Handlers raise :class:`Problem`; the front-ends (HTTP routes, event streams) and the listeners'
own answers (unknown path, wrong method, the admin listener) turn it into an
``application/problem+json`` response, so an error path is one ``raise`` and can never forget
the format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from bridge.edge.access import Principal
from bridge.edge.credentials import request_token, www_authenticate
from bridge.edge.guard import AuthError, Guard
from bridge.telemetry import metrics

PROBLEM_TYPE = "application/problem+json"
TYPE_BASE = "https://edgebridge.dev/problems/"


class Problem(Exception):
    """An HTTP error with a machine-readable ``kind`` (the last part of its ``type`` URI)."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def document(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind,
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def body(self, instance: str | None = None) -> bytes:
        # allow_nan=False: a problem document is JSON a client parses; never NaN in it.
        return json.dumps(self.document(instance), separators=(",", ":"), allow_nan=False).encode()


def token_refused(error: AuthError, protocol: str) -> Problem:
    """The 401 of a refused bearer token over HTTP (produce, fetch, streams, the catalog):
    counted for ``protocol``, with the RFC 6750 challenge naming why."""
    metrics.auth_rejected(protocol, error)
    return Problem(
        401,
        "invalid-token",
        f"token refused ({error.reason}): {error.detail}",
        headers={"www-authenticate": www_authenticate(error)},
    )


def authenticate(
    guard: Guard, authorization: str | None, query_string: bytes | str, protocol: str
) -> Principal:
    """The caller of an HTTP request (``Authorization: Bearer`` or ``access_token``), or
    :func:`token_refused` raised."""
    try:
        return guard.authenticate(request_token(authorization, query_string))
    except AuthError as exc:
        raise token_refused(exc, protocol) from exc
