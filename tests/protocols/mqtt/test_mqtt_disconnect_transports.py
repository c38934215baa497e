"""Issue 15, item 5: a reason-code DISCONNECT reaches a paho-mqtt (MQTT 5) client that keeps
sending, over TLS and over WebSocket, as it does over plain TCP (test_mqtt_exact_delivery.py).

One bridge (module scope) serves every test: a TLS MQTT listener with a self-signed
certificate, MQTT over WebSocket on the shared HTTP listener, Receive Maximum 4 and a maximum
packet size of 1 KiB. Each client floods QoS 0 publishes while the server decides to close it,
so a server that closes at once makes the client see a reset (paho: 0x80 "unspecified") instead
of the reason.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_support import REPO, Paho, bridge_config, mqtt_port, unique

from bridge.model.config import parse_config
from bridge.process.runtime import Bridge

pytestmark = pytest.mark.broker

PREFIX = unique("t")
ROUNDS = 4  # a reset instead of the reason is likely, not certain, on one connection
ROUTES = f"""
[[routes]]
name = "any"
topic = "{PREFIX}-any"
key = "{{topic}}"

[routes.mqtt]
topic = "{PREFIX}/{{topic...}}"
"""


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
async def bridge(kafka_bootstrap: str, certificate: tuple[Path, Path]) -> AsyncIterator[Bridge]:
    cert, key = certificate
    text = bridge_config(
        ROUTES,
        receive_maximum=4,
        max_packet_size=1024,
        tls_cert=str(cert),
        tls_key=str(key),
    )
    config = parse_config(text, REPO / "test-routing.toml", {"KAFKA_BOOTSTRAP": kafka_bootstrap})
    running = Bridge(config, frontends=["mqtt"])
    await running.start()
    yield running
    await running.stop()


def _client(bridge: Bridge, transport: str, certificate: tuple[Path, Path]) -> Paho:
    if transport == "tls":
        client = Paho(mqtt_port(bridge), unique("c"))
        client.client.tls_set_context(ssl.create_default_context(cafile=str(certificate[0])))
        return client
    assert bridge.web is not None
    return Paho(bridge.web.port, unique("c"), transport="websockets", ws_path="/mqtt")


async def _rounds(
    bridge: Bridge, transport: str, certificate: tuple[Path, Path], trigger: list[tuple[bytes, int]]
) -> list[int]:
    """``ROUNDS`` connections, one after the other, flooding after ``trigger``: their
    DISCONNECT reason codes as paho reported them."""
    clients: list[Paho] = []
    try:
        reasons = []
        for _ in range(ROUNDS):
            clients.append(_client(bridge, transport, certificate))
            reasons.append(await _flood_until_disconnected(clients[-1], trigger))
        return reasons
    finally:
        # paho's thread takes up to 1 s to end: all of them at once
        await asyncio.gather(*(asyncio.to_thread(c.client.loop_stop) for c in clients))


async def _flood_until_disconnected(client: Paho, trigger: list[tuple[bytes, int]]) -> int:
    """Publish ``trigger`` (payload, qos) without waiting for acknowledgements, then keep
    publishing QoS 0 until paho reports the disconnect; its reason code is returned."""
    _present, code, _ = await client.connect()
    assert code == 0
    stop = threading.Event()

    def flood() -> None:
        for payload, qos in trigger:
            client.client.publish(f"{PREFIX}/flood", payload, qos)
        while not stop.is_set() and not client.disconnected.is_set():
            for _ in range(16):
                client.client.publish(f"{PREFIX}/flood", b"y" * 200, 0)
            # paho's network thread writes while anything is queued: let it read too
            time.sleep(0.001)

    flooding = asyncio.get_running_loop().run_in_executor(None, flood)
    try:
        reason = await client.wait_disconnected()
    finally:
        stop.set()
        await flooding
        client.client.disconnect()  # paho's thread then ends without trying to reconnect
    assert reason is not None
    return reason


@pytest.mark.parametrize("transport", ["tls", "websocket"])
async def test_receive_maximum_exceeded_reaches_a_flooding_client(bridge, certificate, transport):
    # Receive Maximum is 4; paho keeps up to 20 QoS 1 publishes in flight regardless
    reasons = await _rounds(bridge, transport, certificate, [(b"x", 1)] * 40)
    assert reasons == [0x93] * ROUNDS


@pytest.mark.parametrize("transport", ["tls", "websocket"])
async def test_packet_too_large_reaches_a_flooding_client(bridge, certificate, transport):
    reasons = await _rounds(bridge, transport, certificate, [(b"x" * 4096, 0)])
    assert reasons == [0x95] * ROUNDS
