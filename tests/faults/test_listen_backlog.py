"""Regression: the listeners' accept queues. asyncio's create_server and Hypercorn re-``listen()``
a passed socket with their own backlog of 100, so a reconnect storm overflowed the queue
(bench/connections.py at 50k-100k clients counted 126k ListenOverflows and 76k SYN
retransmissions; each dropped SYN costs its client 1, 3, 7... s of backoff).

First as the kernel reports it (``ss``: a listening socket's Send-Q is its backlog), then by
behaviour: with the bridge's event loop blocked (nothing is accepted), 400 clients connecting at
once must all complete their handshake from the queue."""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bridge.web.sockets import LISTEN_BACKLOG

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`

ROUTES = """
[[routes]]
name = "backlog"
topic = "backlog-{s}"
key = "{{x}}"
[routes.mqtt]
topic = "backlog{s}/{{x}}"
[routes.sse]
path = "/backlog{s}"
"""


def kernel_backlogs(port: int) -> list[int]:
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.strip()]


def connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.8):
            return True
    except OSError:
        return False


async def test_listeners_keep_a_deep_accept_queue(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    s = str(time.monotonic_ns())[-8:]
    bridge = await bridge_factory(ROUTES.format(s=s), frontends=["mqtt", "sse"])
    mqtt_port, http_port = bridge.frontend("mqtt").port, bridge.web.port
    for port in (mqtt_port, http_port):
        assert kernel_backlogs(port) == [LISTEN_BACKLOG], (port, kernel_backlogs(port))

    # Behaviour: block this (the bridge's) loop so nothing is accepted while 400 connect at once.
    with ThreadPoolExecutor(max_workers=200) as pool:
        futures = [
            pool.submit(connect, port) for port in (mqtt_port, http_port) for _ in range(200)
        ]
        # Blocking on purpose: the bridge accepts nothing, only the kernel's queue holds them.
        time.sleep(1.0)  # noqa: ASYNC251
        connected = [f.result() for f in futures]
    assert all(connected), f"{connected.count(False)} of {len(connected)} handshakes dropped"
