"""Settings shared by every aiokafka client the bridge makes (producer, consumers, admin).

Every client (producer, hub and catch-up consumers, tables, admin, readiness probe, topic
identity) takes its options from :func:`client_options`, so TLS and SASL apply to all of them
alike. The TLS context and the OAUTHBEARER token provider are made once per process and shared:
one CA load, one token cache, however many clients.

:func:`check_connection` is the start-up check: one connection to a bootstrap broker, made in two
steps (reach it, with TLS when configured; then authenticate) so that a failure names its cause
(unreachable, untrusted certificate, authentication refused) instead of aiokafka's generic
"Unable to bootstrap", and within a bounded time.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import ssl
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError

from bridge.model.config import KafkaSettings
from bridge.model.kafka_security import OAUTHBEARER, KafkaSecurity
from bridge.model.message import Message


class KafkaConnectError(RuntimeError):
    """The bridge cannot connect to Kafka at start-up; the message says why, for people."""


def client_options(settings: KafkaSettings, bootstrap: str, role: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": f"{settings.client_id}-{role}",
        "request_timeout_ms": settings.request_timeout_ms,
    }
    options.update(security_options(settings.security))
    return options


def consumer_options(settings: KafkaSettings, bootstrap: str, role: str) -> dict[str, Any]:
    """Options for a group-less consumer that is assigned partitions by hand."""
    return {
        **client_options(settings, bootstrap, role),
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # Tansu holds every fetch for the whole wait, so this is the floor of live latency.
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }


def security_options(security: KafkaSecurity) -> dict[str, Any]:
    """aiokafka's spelling of the ``[kafka]`` TLS and SASL settings (the same for every client)."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.uses_ssl:
        options["ssl_context"] = ssl_context(security)
    if security.uses_sasl:
        options["sasl_mechanism"] = security.sasl_mechanism
        if security.sasl_mechanism == OAUTHBEARER:
            options["sasl_oauth_token_provider"] = token_provider(security)
        else:
            # aiokafka names these "plain" but uses them for SCRAM too.
            options["sasl_plain_username"] = security.sasl_username
            options["sasl_plain_password"] = security.sasl_password
    return options


@functools.cache
def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """One client TLS context per configuration: verifies the broker, optionally presents ours."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(security.ssl_ca_file) if security.ssl_ca_file else None,
    )
    context.check_hostname = security.ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED  # never optional, even without a hostname check
    if security.ssl_cert_file and security.ssl_key_file:
        context.load_cert_chain(str(security.ssl_cert_file), str(security.ssl_key_file))
    return context


@functools.cache
def token_provider(security: KafkaSecurity) -> AbstractTokenProvider:
    """The configured ``module:callable``, called once; it must give an AbstractTokenProvider."""
    spec = security.oauth_token_provider or ""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise KafkaConnectError(f"oauth_token_provider {spec!r} cannot be loaded: {exc}") from exc
    if isinstance(target, AbstractTokenProvider) or not callable(target):
        provider = target
    else:
        provider = target()
    if not isinstance(provider, AbstractTokenProvider):
        raise KafkaConnectError(
            f"oauth_token_provider {spec!r} gave {type(provider).__name__}, not an "
            "aiokafka.abc.AbstractTokenProvider"
        )
    return provider


def _bootstrap_hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for entry in bootstrap.split(","):
        entry = entry.strip()
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        host = host.strip("[]") or entry
        hosts.append((host, int(port) if port.isdigit() else 9092))
    return hosts


async def check_connection(settings: KafkaSettings, bootstrap: str) -> None:
    """Connect to a bootstrap broker as every client will; raise :class:`KafkaConnectError`.

    Each broker of ``bootstrap`` is tried in turn (each within ``request_timeout_ms``); the
    first that accepts the connection and the credentials ends the check. The error names the
    last broker's cause. The password never appears in it.
    """
    security = settings.security
    timeout_s = settings.request_timeout_ms / 1000
    options = security_options(security)
    reach = {k: v for k, v in options.items() if k in ("ssl_context",)}
    reach["security_protocol"] = "SSL" if security.uses_ssl else "PLAINTEXT"
    failure = f"no broker in bootstrap {bootstrap!r}"
    for host, port in _bootstrap_hosts(bootstrap):
        where = f"{host}:{port}"
        # Step 1: TCP (and TLS) only, so a refused, silent or untrusted broker says so.
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id=f"{settings.client_id}-check",
                    request_timeout_ms=settings.request_timeout_ms,
                    **reach,
                ),
                timeout_s,
            )
            conn.close()
        except ssl.SSLCertVerificationError as exc:
            failure = (
                f"TLS: the certificate of Kafka at {where} is not trusted "
                f"({exc.verify_message}); set [kafka] ssl_ca_file to the CA that signed it"
            )
            continue
        except ssl.SSLError as exc:
            failure = f"TLS handshake with Kafka at {where} failed: {exc.reason or exc}"
            continue
        except TimeoutError:
            failure = f"Kafka at {where} did not answer within {timeout_s:g} s"
            continue
        except (OSError, KafkaError) as exc:
            failure = f"cannot reach Kafka at {where}: {_reason(exc)}"
            if security.uses_ssl and not isinstance(exc, OSError):
                failure += " (is it a TLS listener?)"
            continue
        if not security.uses_sasl:
            return
        # Step 2: the same again with SASL: what fails now is the authentication.
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id=f"{settings.client_id}-check",
                    request_timeout_ms=settings.request_timeout_ms,
                    **options,
                ),
                timeout_s,
            )
            conn.close()
            return
        except TimeoutError:
            failure = f"SASL authentication with Kafka at {where} got no answer in {timeout_s:g} s"
        except KafkaConnectError:
            raise
        except Exception as exc:  # aiokafka's SCRAM code raises KeyError/ValueError too
            who = (
                f"with tokens from {security.oauth_token_provider}"
                if security.sasl_mechanism == OAUTHBEARER
                else f"as {security.sasl_username!r}"
            )
            failure = (
                f"SASL {security.sasl_mechanism} authentication {who} was refused by Kafka at "
                f"{where}: {_reason(exc)} (wrong password or user, or a mechanism the broker "
                "does not offer)"
            )
    raise KafkaConnectError(failure)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, KeyError):
        return "the broker's final SCRAM message carried no server signature"
    return f"{name}: {text}" if text and name not in text else (text or name)


def to_message(record: ConsumerRecord[bytes, bytes]) -> Message:
    headers = tuple((name, value if value is not None else b"") for name, value in record.headers)
    return Message(
        topic=record.topic,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp_ms=record.timestamp,
        partition=record.partition,
        offset=record.offset,
    )
