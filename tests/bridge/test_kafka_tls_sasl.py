"""TLS and SASL to Kafka against real brokers: the embedded Tansu behind a TLS terminator (Tansu
0.6.0 cannot serve TLS itself) and Tansu with ``--authentication``.

What Tansu lets a test prove (docs/tansu-behaviour.md): TLS end to end, mutual TLS included, and
every SASL failure path. It offers SCRAM-SHA-256/512 and OAUTHBEARER in its handshake but cannot
hold a SCRAM user an authenticated client could use, and it refuses PLAIN, so no SASL login can
succeed against it; the successful options of every mechanism are covered by the unit tests in
test_kafka_security.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sse_support import EventStream, base_url
from tls_certs import Pki, make_pki
from tls_proxy import TlsProxy

from bridge.kafka.client_settings import KafkaConnectError, check_connection
from bridge.kafka.embedded_broker import EmbeddedBroker
from bridge.model.config import KafkaSettings
from bridge.model.kafka_security import KafkaSecurity

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "not-the-right-one-4711"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_kafka(pki: Pki) -> Iterator[TlsProxy]:
    """Tansu reachable only through TLS that requires a client certificate (mutual TLS)."""
    proxy = TlsProxy(pki.cert_file, pki.key_file, client_ca=pki.ca_file).start()
    with EmbeddedBroker(advertised=proxy.address) as broker:
        proxy.target = ("127.0.0.1", broker.port)
        yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def sasl_kafka(pki: Pki) -> Iterator[tuple[EmbeddedBroker, TlsProxy]]:
    """Tansu requiring SASL, reachable in clear and through TLS (for SASL_SSL)."""
    proxy = TlsProxy(pki.cert_file, pki.key_file).start()
    with EmbeddedBroker(authentication=True, advertised=proxy.address) as broker:
        proxy.target = ("127.0.0.1", broker.port)
        yield broker, proxy
    proxy.stop()


def settings(**security: object) -> KafkaSettings:
    return KafkaSettings(
        bootstrap="external",
        request_timeout_ms=3000,
        security=KafkaSecurity(**security),  # type: ignore[arg-type]
    )


ROUTES = """
[[routes]]
name = "scores"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/scores/{{match}}"

[[routes.http]]
method = "POST"
path = "/scores/{{match}}"
"""


async def test_a_bridge_produces_and_streams_over_mutual_tls(tls_kafka: TlsProxy, pki: Pki) -> None:
    from harness import start_bridge

    topic = f"tls-{uuid.uuid4().hex[:8]}"
    before = tls_kafka.handshakes
    bridge = await start_bridge(
        ROUTES.format(topic=topic),
        tls_kafka.address,
        frontends=["http", "sse"],
        kafka_options=(
            f'security_protocol = "SSL"\nssl_ca_file = "{pki.ca_file}"\n'
            f'ssl_cert_file = "{pki.client_cert_file}"\nssl_key_file = "{pki.client_key_file}"'
        ),
    )
    try:
        async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
            async with EventStream(client, path="/scores/m1") as stream:
                sent = [{"home": 1, "away": 0}, {"home": 2, "away": 0}]
                for body in sent:
                    response = await client.post("/scores/m1", json=body)
                    assert response.status_code < 300, response.text
                events = await stream.until(2)
        assert [json.loads(e.data) for e in events] == sent
    finally:
        await bridge.stop()
    # Every Kafka connection (admin, producer, hub consumer...) came through the TLS proxy.
    assert tls_kafka.handshakes - before >= 3


async def test_an_untrusted_certificate_is_named_as_the_cause(
    tls_kafka: TlsProxy, pki: Pki
) -> None:
    wrong_ca = settings(
        protocol="SSL",
        ssl_ca_file=pki.other_ca_file,
        ssl_cert_file=pki.client_cert_file,
        ssl_key_file=pki.client_key_file,
    )
    with pytest.raises(KafkaConnectError) as caught:
        await asyncio.wait_for(check_connection(wrong_ca, tls_kafka.address), 30)
    assert str(caught.value).startswith(
        f"TLS: the certificate of Kafka at {tls_kafka.address} is not trusted"
    )
    assert "ssl_ca_file" in str(caught.value)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "PLAIN"),
    ],
)
async def test_refused_sasl_credentials_are_named_as_the_cause(
    sasl_kafka: tuple[EmbeddedBroker, TlsProxy], pki: Pki, protocol: str, mechanism: str
) -> None:
    broker, proxy = sasl_kafka
    tls = protocol == "SASL_SSL"
    wrong = settings(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username="bridge",
        sasl_password=PASSWORD,
        ssl_ca_file=pki.ca_file if tls else None,
    )
    before = proxy.handshakes
    address = proxy.address if tls else broker.bootstrap
    with pytest.raises(KafkaConnectError) as caught:
        await asyncio.wait_for(check_connection(wrong, address), 30)
    message = str(caught.value)
    assert message.startswith(
        f"SASL {mechanism} authentication as 'bridge' was refused by Kafka at {address}"
    )
    assert PASSWORD not in message
    if tls:  # the SASL exchange ran inside TLS
        assert proxy.handshakes > before


class LocalTokens:
    """What an MSK IAM signer or an OAuth client-credentials flow would be: tokens from here."""

    issued = 0

    async def token(self) -> str:
        LocalTokens.issued += 1
        return "eyJhbGciOiJub25lIn0.eyJzdWIiOiJlZGdlYnJpZGdlIn0."


def local_tokens() -> object:
    from aiokafka.abc import AbstractTokenProvider

    class Provider(AbstractTokenProvider):
        async def token(self) -> str:
            return await LocalTokens().token()

    return Provider()


async def test_oauthbearer_sends_the_providers_token(
    sasl_kafka: tuple[EmbeddedBroker, TlsProxy],
) -> None:
    """Tansu offers OAUTHBEARER but validates no token: the provider's token reaches it, and the
    refusal is reported as such."""
    broker, _proxy = sasl_kafka
    oauth = settings(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="OAUTHBEARER",
        oauth_token_provider=f"{__name__}:local_tokens",
    )
    before = LocalTokens.issued
    with pytest.raises(KafkaConnectError) as caught:
        await asyncio.wait_for(check_connection(oauth, broker.bootstrap), 30)
    assert LocalTokens.issued > before
    assert str(caught.value).startswith(
        f"SASL OAUTHBEARER authentication with tokens from {__name__}:local_tokens was refused"
    )


def run_bridge(
    tmp_path: Path, bootstrap: str, kafka: str, env: dict[str, str]
) -> tuple[int, str, str]:
    """``edgebridge run`` as an operator starts it; returns (exit code, log, stderr)."""
    config = tmp_path / "routing.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{bootstrap}"\nrequest_timeout_ms = 3000\n{kafka}\n'
        '[listeners.http]\nhost = "127.0.0.1"\nport = 0\n'
        '[listeners.mqtt]\nhost = "127.0.0.1"\nport = 0\n'
        '[[routes]]\nname = "s"\ntopic = "s"\n[routes.sse]\npath = "/s"\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.process.cli",
            "run",
            "--config",
            str(config),
            "--log-format",
            "json",
        ],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard, not a timing assertion
    )
    return result.returncode, result.stdout, result.stderr


def test_a_wrong_password_ends_the_process_with_one_clear_line(
    tmp_path: Path, sasl_kafka: tuple[EmbeddedBroker, TlsProxy]
) -> None:
    broker, _proxy = sasl_kafka
    code, log, stderr = run_bridge(
        tmp_path,
        broker.bootstrap,
        'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "SCRAM-SHA-512"\n'
        'sasl_username = "bridge"\nsasl_password_env = "KAFKA_PASSWORD"',
        {"KAFKA_PASSWORD": PASSWORD},
    )
    assert code == 1
    output = log + stderr
    assert "Traceback" not in output and PASSWORD not in output
    failures = [json.loads(x) for x in output.splitlines() if '"kafka.connect_failed"' in x]
    assert len(failures) == 1
    assert failures[0]["reason"].startswith("SASL SCRAM-SHA-512 authentication as 'bridge'")
    assert (
        f"edgebridge: cannot start: SASL SCRAM-SHA-512 authentication as 'bridge' was refused by Kafka at {broker.bootstrap}"
        in stderr
    )


def test_an_untrusted_certificate_ends_the_process_with_one_clear_line(
    tmp_path: Path, tls_kafka: TlsProxy, pki: Pki
) -> None:
    code, log, stderr = run_bridge(
        tmp_path,
        tls_kafka.address,
        f'security_protocol = "SSL"\nssl_ca_file = "{pki.other_ca_file}"',
        {},
    )
    assert code == 1
    assert "Traceback" not in log + stderr
    assert (
        f"edgebridge: cannot start: TLS: the certificate of Kafka at {tls_kafka.address} is not trusted"
        in stderr
    )
