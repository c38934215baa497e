"""The address other instances dial to forward a request (HTTP, gRPC and MCP share it)."""

from __future__ import annotations

import socket

from bridge.model.advertise import advertised_address


def test_advertise_is_completed_with_the_bound_host_and_own_port() -> None:
    assert advertised_address("", "10.0.0.5", 8080) == "10.0.0.5:8080"
    assert advertised_address("bridge-1", "0.0.0.0", 8080) == "bridge-1:8080"
    assert advertised_address("bridge-1:9000", "0.0.0.0", 8080) == "bridge-1:9000"
    assert advertised_address("[fd00::1]:9000", "::", 8080) == "[fd00::1]:9000"
    assert advertised_address("", "fd00::2", 8080) == "[fd00::2]:8080"


def test_a_wildcard_bind_is_replaced_by_the_host_name() -> None:
    for wildcard in ("0.0.0.0", "::", "[::]", ""):
        assert advertised_address("", wildcard, 50051) == f"{socket.gethostname()}:50051"
