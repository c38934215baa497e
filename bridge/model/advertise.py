"""The address other instances reach this one at, for forwarding a request to the instance that
owns its idempotency key (HTTP, gRPC, MCP alike).

``advertise`` (``host[:port]``, IPv6 in brackets) is completed with the bound host and this
process's port; a wildcard bind is no address to dial, so the host name stands in for it.
"""

from __future__ import annotations

import socket

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def advertised_address(advertise: str, bound_host: str, own_port: int) -> str:
    """``host:port`` for other instances to dial."""
    host, port = advertise, ""
    if advertise.startswith("["):  # [IPv6]:port
        closing = advertise.index("]")
        host, port = advertise[: closing + 1], advertise[closing + 2 :]
    elif ":" in advertise:
        host, port = advertise.rsplit(":", 1)
    if not host:
        host = bound_host
        if host in _WILDCARDS:
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
    return f"{host}:{port or own_port}"
