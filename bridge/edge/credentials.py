"""Where a token comes from, per protocol, and how a refusal is phrased back (RFC 6750).

* HTTP and SSE: ``Authorization: Bearer <token>``, else the ``access_token`` query parameter
  (an EventSource cannot set headers). Both at once must agree.
* MQTT: the CONNECT password; the username may carry it instead (clients that can only set a
  username), recognised by the JWT shape.
* WebSocket upgrade (MQTT over WebSocket): the same as HTTP, on the upgrade request.

Pure functions: no I/O, so every front-end phrases the same thing the same way.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from bridge.edge.guard import AuthError

QUERY_PARAMETER = "access_token"
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def looks_like_jwt(text: str) -> bool:
    return bool(_JWT_SHAPE.match(text))


def bearer_token(authorization: str | bytes | None) -> str | None:
    """The token of an ``Authorization`` header value; None if absent.

    Raises :class:`AuthError` ``malformed`` for another scheme or an empty token, so a client
    sending ``Basic ...`` learns why it is refused instead of silently being anonymous.
    """
    if authorization is None:
        return None
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(
            "malformed", f"Authorization scheme {scheme!r} is not Bearer", in_request=True
        )
    token = token.strip()
    if not token:
        raise AuthError("malformed", "Authorization: Bearer carries no token", in_request=True)
    return token


def query_token(query_string: str | bytes) -> str | None:
    """The ``access_token`` query parameter, if given exactly once."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    values = parse_qs(query_string, keep_blank_values=True).get(QUERY_PARAMETER)
    if not values:
        return None
    if len(values) > 1:
        raise AuthError(
            "malformed", f"{QUERY_PARAMETER} is given {len(values)} times", in_request=True
        )
    if not values[0]:
        raise AuthError("malformed", f"{QUERY_PARAMETER} is empty", in_request=True)
    return values[0]


def request_token(authorization: str | bytes | None, query_string: str | bytes = "") -> str | None:
    """The token of an HTTP request, SSE stream or WebSocket upgrade (None: anonymous)."""
    header = bearer_token(authorization)
    query = query_token(query_string)
    if header is not None and query is not None and header != query:
        raise AuthError(
            "malformed", f"different tokens in Authorization and {QUERY_PARAMETER}", in_request=True
        )
    return header if header is not None else query


def mqtt_token(username: str | None, password: bytes | str | None) -> str | None:
    """The token of an MQTT CONNECT: the password, else a username shaped like a JWT."""
    if password:
        text = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
        return text.strip()
    if username and looks_like_jwt(username):
        return username
    return None


def www_authenticate(error: AuthError | None = None, realm: str = "edgebridge") -> str:
    """The ``WWW-Authenticate`` value of a 401 (RFC 6750 section 3).

    Without an error (no token was presented) only the realm is named, as the RFC asks.
    """
    value = f'Bearer realm="{_quoted(realm)}"'
    if error is None:
        return value
    code = "invalid_request" if error.in_request else "invalid_token"
    description = _quoted(f"{error.reason}: {error.detail}")
    return f'{value}, error="{code}", error_description="{description}"'


def _quoted(text: str) -> str:
    # error_description is limited to printable ASCII without '"' and '\' (RFC 6750 3).
    return "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "?" for ch in text)[:200]
