"""Listening sockets, and the one clear error when one cannot be had.

Every listener (HTTP, MQTT, admin) binds through :func:`listening_socket`; a port another
program holds becomes :class:`CannotListen`, which ``edgebridge run`` turns into one line and
exit status 1 instead of a traceback (and, under ``--workers``, instead of workers restarted
forever against a port they will never get).
"""

from __future__ import annotations

import errno
import socket

# Pending connections the kernel may queue per listening socket (capped by net.core.somaxconn).
# Servers built on asyncio re-listen with their own default of 100, which makes a reconnect storm
# overflow the queue: dropped SYNs come back only after 1, 3, 7... s of client backoff.
LISTEN_BACKLOG = 4096

_HINTS = {
    errno.EADDRINUSE: "another program listens there (a bridge already running, `make demo`?):"
    " stop it, or choose another port in routing.toml or with --listen-port NAME=PORT",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address",
    errno.EACCES: "ports below 1024 need privileges: choose a port above 1023",
}


class CannotListen(Exception):
    """A listener's address could not be bound; the message names it and what to do."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        hint = _HINTS.get(cause.errno or 0, "")
        reason = cause.strerror or str(cause)
        super().__init__(
            f"cannot listen on {host}:{port}: {reason}" + (f"; {hint}" if hint else "")
        )
        self.errno = cause.errno


def bound_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port``, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(host, port, exc) from exc
    return sock


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound, listening TCP socket (``reuse_port`` lets worker processes share the port)."""
    sock = bound_socket(host, port, reuse_port)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def check_free(host: str, port: int) -> None:
    """Raise :class:`CannotListen` if ``host:port`` cannot be bound right now. Bound without
    ``SO_REUSEPORT``, so a port shared by another program's workers counts as taken."""
    bound_socket(host, port).close()
