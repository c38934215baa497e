"""[kafka] TLS and SASL: validated with file:line errors, masked when shown, and turned into the
same aiokafka options for every client (OAUTHBEARER, PLAIN and mTLS included: mechanisms the
embedded broker cannot serve are covered here, at the level of the client settings)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from tls_certs import Pki, make_pki

from bridge.kafka.client_settings import (
    KafkaConnectError,
    check_connection,
    client_options,
    consumer_options,
    token_provider,
)
from bridge.model.config import ConfigError, KafkaSettings, parse_config
from bridge.model.kafka_security import KafkaSecurity

REPO = Path(__file__).resolve().parents[2]

ROUTES = """
[[routes]]
name = "scores"
topic = "scores"

[routes.sse]
path = "/scores"
"""

ENV = {"KAFKA_BOOTSTRAP": "kafka.example:9093", "KAFKA_PASSWORD": "s3cret-Pa55"}


class StaticTokens(AbstractTokenProvider):
    """A local token provider (what an MSK IAM or OAuth client-credentials provider would be)."""

    calls = 0

    async def token(self) -> str:
        StaticTokens.calls += 1
        return "header.payload.signature"


def static_tokens() -> StaticTokens:
    return StaticTokens()


NOT_A_PROVIDER = object()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def load(kafka: str, directory: Path, env: dict[str, str] | None = None) -> KafkaSettings:
    text = f"[kafka]\n{kafka}\n{ROUTES}"
    return parse_config(text, directory / "routing.toml", ENV if env is None else env).kafka


def problems(kafka: str, directory: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(kafka, directory, env)
    return [str(p) for p in caught.value.problems]


def test_literal_password_is_refused_with_a_pointer_to_the_env_option(tmp_path: Path) -> None:
    found = problems(
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"\n'
        'sasl_password = "hunter2"\nsasl_password_env = "KAFKA_PASSWORD"',
        tmp_path,
    )
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'routing.toml'}:5: kafka.sasl_password: ")
    assert "environment variable" in found[0] and "sasl_password_env" in found[0]
    assert "hunter2" not in found[0]


def test_missing_pieces_are_reported_at_their_lines(tmp_path: Path, pki: Pki) -> None:
    found = problems(
        'security_protocol = "SASL_SSL"\n'  # line 2
        'sasl_mechanism = "SCRAM-SHA-512"\n'  # line 3: needs username
        'sasl_password_env = "NOT_SET_ANYWHERE"\n'  # line 4: not set
        f'ssl_cert_file = "{pki.cert_file}"\n'  # line 5: without its key
        'ssl_ca_file = "missing-ca.pem"\n',  # line 6: relative to routing.toml, absent
        tmp_path,
    )
    assert (
        f"{tmp_path / 'routing.toml'}:3: kafka.sasl_mechanism: SCRAM-SHA-512 needs sasl_username"
        in found
    )
    assert any(
        p.startswith(f"{tmp_path / 'routing.toml'}:4: kafka.sasl_password_env:")
        and "NOT_SET_ANYWHERE is not set" in p
        for p in found
    )
    assert any(
        p.startswith(f"{tmp_path / 'routing.toml'}:5: kafka.ssl_cert_file:")
        and "ssl_key_file is missing" in p
        for p in found
    )
    assert any(
        p.startswith(f"{tmp_path / 'routing.toml'}:6: kafka.ssl_ca_file: cannot read")
        for p in found
    )


def test_options_that_the_protocol_would_ignore_are_errors(tmp_path: Path, pki: Pki) -> None:
    found = problems(
        f'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"\n'
        f'sasl_password_env = "KAFKA_PASSWORD"\nssl_ca_file = "{pki.ca_file}"\n'
        'oauth_token_provider = "x:y"',
        tmp_path,
    )
    assert any(":6: kafka.ssl_ca_file: only used with SSL or SASL_SSL" in p for p in found)
    assert any(":7: kafka.oauth_token_provider: only used with" in p for p in found)
    found = problems('security_protocol = "SSL"\nsasl_username = "u"', tmp_path)
    assert any(
        ":3: kafka.sasl_username: only used with SASL_PLAINTEXT or SASL_SSL" in p for p in found
    )
    found = problems('security_protocol = "SASL_SSL"', tmp_path)
    assert any(":2: kafka.security_protocol: SASL_SSL needs sasl_mechanism" in p for p in found)
    found = problems('security_protocol = "SASL_SSL"\nsasl_mechanism = "OAUTHBEARER"', tmp_path)
    assert any(
        ":3: kafka.sasl_mechanism: OAUTHBEARER needs oauth_token_provider" in p for p in found
    )
    found = problems('security_protocol = "SSL"\noauth_token_provider = "no colon"', tmp_path)
    assert any(":3: kafka.oauth_token_provider:" in p and "does not match" in p for p in found)


def test_a_token_provider_module_that_is_not_there_is_a_load_time_error(tmp_path: Path) -> None:
    found = problems(
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "OAUTHBEARER"\n'
        'oauth_token_provider = "no_such_module_4711:provider"',
        tmp_path,
    )
    assert found == [
        f"{tmp_path / 'routing.toml'}:4: kafka.oauth_token_provider: module "
        "'no_such_module_4711' not found: is it on PYTHONPATH (or installed)?"
    ]


def test_a_file_that_is_not_pem_is_a_load_time_error(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    found = problems(
        f'security_protocol = "SSL"\nssl_ca_file = "junk.pem"\nssl_cert_file = "{pki.cert_file}"\n'
        f'ssl_key_file = "{pki.ca_file}"',  # a certificate where the key should be
        tmp_path,
    )
    assert any(":3: kafka.ssl_ca_file: not a PEM CA certificate" in p for p in found)
    assert any(":4: kafka.ssl_cert_file: certificate and key do not load" in p for p in found)


def test_the_embedded_broker_cannot_be_asked_for_tls(tmp_path: Path) -> None:
    found = problems('security_protocol = "SSL"', tmp_path, env={})
    assert any(":2: kafka.security_protocol: SSL needs a Kafka of your own" in p for p in found)


async def test_sasl_scram_over_tls_becomes_the_same_options_for_every_client(
    tmp_path: Path, pki: Pki
) -> None:
    settings = load(
        f'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"\n'
        f'sasl_username = "bridge"\nsasl_password_env = "KAFKA_PASSWORD"\n'
        f'ssl_ca_file = "{pki.ca_file}"',
        tmp_path,
    )
    assert "s3cret-Pa55" not in repr(settings)  # never in a log line or a traceback
    options = client_options(settings, "kafka.example:9093", "admin")
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "bridge"
    assert options["sasl_plain_password"] == "s3cret-Pa55"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "edgebridge test CA"),),)
    ]
    consumer = consumer_options(settings, "kafka.example:9093", "hub-t")
    assert consumer["ssl_context"] is context  # one context per process, shared by all clients
    # aiokafka accepts these options in each client the bridge makes (it raises on unknown ones).
    AIOKafkaAdminClient(**options)
    AIOKafkaProducer(**options)
    AIOKafkaConsumer(**consumer)


async def test_plain_and_mtls_options(tmp_path: Path, pki: Pki) -> None:
    settings = load(
        f'security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_username = "API_KEY"\n'
        f'sasl_password_env = "KAFKA_PASSWORD"\nssl_cert_file = "{pki.cert_file}"\n'
        f'ssl_key_file = "{pki.key_file}"\nssl_check_hostname = false',
        tmp_path,
    )
    options = client_options(settings, "b:9092", "producer")
    assert options["sasl_mechanism"] == "PLAIN" and options["sasl_plain_username"] == "API_KEY"
    context = options["ssl_context"]
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    AIOKafkaProducer(**options)


async def test_oauthbearer_uses_the_named_token_provider(tmp_path: Path) -> None:
    settings = load(
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "OAUTHBEARER"\n'
        f'oauth_token_provider = "{__name__}:static_tokens"',
        tmp_path,
    )
    options = client_options(settings, "b:9092", "admin")
    provider = options["sasl_oauth_token_provider"]
    assert isinstance(provider, StaticTokens)
    assert "sasl_plain_password" not in options
    assert client_options(settings, "b:9092", "hub")["sasl_oauth_token_provider"] is provider
    AIOKafkaAdminClient(**options)


def test_a_bad_token_provider_is_a_clear_error() -> None:
    missing = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", oauth_token_provider="nowhere.at_all:x"
    )
    with pytest.raises(KafkaConnectError, match="cannot be loaded"):
        token_provider(missing)
    wrong = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        oauth_token_provider=f"{__name__}:NOT_A_PROVIDER",
    )
    with pytest.raises(KafkaConnectError, match=r"not an aiokafka\.abc\.AbstractTokenProvider"):
        token_provider(wrong)


def test_check_prints_the_connection_with_the_secret_masked(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "routing.toml"
    config.write_text(
        '[kafka]\nbootstrap = "kafka.example:9093"\nsecurity_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "bridge"\n'
        f'sasl_password_env = "KAFKA_PASSWORD"\nssl_ca_file = "{pki.ca_file}"\n{ROUTES}'
    )
    result = subprocess.run(
        [sys.executable, "-m", "bridge.process.cli", "check", "--config", str(config)],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "KAFKA_PASSWORD": "s3cret-Pa55"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-Pa55" not in result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("Kafka connection:"))
    assert line == (
        f"Kafka connection: SASL_SSL, CA {pki.ca_file}, SCRAM-SHA-512 as 'bridge', "
        "password $KAFKA_PASSWORD = ********"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens here once the socket closes


def test_an_unreachable_bootstrap_ends_the_process_with_one_clear_line(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    config = tmp_path / "routing.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{bootstrap}"\nrequest_timeout_ms = 2000\n'
        '[listeners.http]\nhost = "127.0.0.1"\nport = 0\n'
        '[listeners.mqtt]\nhost = "127.0.0.1"\nport = 0\n'
        f"{ROUTES}"
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
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard, not a timing assertion
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    failures = [x for x in output.splitlines() if '"kafka.connect_failed"' in x]
    assert len(failures) == 1, output
    assert f"edgebridge: cannot start: cannot reach Kafka at {bootstrap}: " in result.stderr


async def test_a_silent_bootstrap_is_given_up_after_the_request_timeout() -> None:
    """A port that accepts connections but never answers (a firewall, a wrong service)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or writes
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = KafkaSettings(bootstrap=address, request_timeout_ms=300)
        with pytest.raises(KafkaConnectError) as caught:
            await asyncio.wait_for(check_connection(settings, address), 30)  # a hang guard
    assert str(caught.value) == f"Kafka at {address} did not answer within 0.3 s"


AIOKAFKA_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}


def test_every_kafka_client_takes_its_options_from_client_settings() -> None:
    """TLS and SASL apply only if every aiokafka client is built from client_options (directly
    or through consumer_options): a client made any other way would connect in clear."""
    import ast

    offenders, seen = [], 0
    for root in ("bridge", "protocols"):
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                body = ast.unparse(function)
                for call in ast.walk(function):
                    if not (
                        isinstance(call, ast.Call)
                        and isinstance(call.func, ast.Name)
                        and call.func.id in AIOKAFKA_CLIENTS
                    ):
                        continue
                    seen += 1
                    spread = [k for k in call.keywords if k.arg is None]
                    from_settings = "client_options(" in body or "consumer_options(" in body
                    if not spread or not from_settings:
                        offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert seen >= 8  # producer, hub, catch-up, tables, ledger, admin, search, topic identity
    assert offenders == []
