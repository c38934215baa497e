"""How the bridge authenticates to Kafka and protects the connection: ``[kafka]`` TLS and SASL.

Pure settings, checked when routing.toml is loaded so every mistake is reported with its line:
a protocol without the options it needs (or with options it would ignore), a certificate file
that cannot be read or is not PEM, an environment variable that is not set. The password itself
never appears in the file: ``sasl_password_env`` names the variable that holds it, and nothing
here prints it (``repr`` and :meth:`KafkaSecurity.describe` mask it).

The kafka layer turns these settings into aiokafka options (``bridge/kafka/client_settings.py``);
this module only decides what is valid.
"""

from __future__ import annotations

import importlib.util
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLAINTEXT = "PLAINTEXT"
SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
PASSWORD_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})
OAUTHBEARER = "OAUTHBEARER"

# The [kafka] keys this module owns (the rest of [kafka] is built in config.py).
KEYS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "sasl_password_env",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_check_hostname",
    "oauth_token_provider",
)

Report = Callable[[str, str], None]  # (field, message): a problem at [kafka].<field>


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The connection's protection; the defaults are Kafka's (PLAINTEXT, no SASL)."""

    protocol: str = PLAINTEXT
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    # Read from the environment at load time; kept out of repr so no log or traceback shows it.
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_file: Path | None = None  # None: the system's trusted CAs
    ssl_cert_file: Path | None = None  # with ssl_key_file: a client certificate (mTLS)
    ssl_key_file: Path | None = None
    ssl_check_hostname: bool = True
    oauth_token_provider: str | None = None  # "module:callable" giving an aiokafka provider

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in SSL_PROTOCOLS

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in SASL_PROTOCOLS

    def describe(self) -> str:
        """One line for people (``edgebridge check``, start-up logs): secrets masked."""
        parts = [self.protocol]
        if self.uses_ssl:
            parts.append(f"CA {self.ssl_ca_file}" if self.ssl_ca_file else "system CAs")
            if self.ssl_cert_file:
                parts.append(f"client certificate {self.ssl_cert_file}")
            if not self.ssl_check_hostname:
                parts.append("hostname NOT checked")
        if self.uses_sasl:
            if self.sasl_mechanism == OAUTHBEARER:
                parts.append(f"OAUTHBEARER tokens from {self.oauth_token_provider}")
            else:
                masked = "********" if self.sasl_password else "(empty)"
                parts.append(
                    f"{self.sasl_mechanism} as {self.sasl_username!r}, "
                    f"password ${self.sasl_password_env} = {masked}"
                )
        return ", ".join(parts)


def load_kafka_security(
    raw: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str], report: Report
) -> KafkaSecurity:
    """Build the settings from the ``[kafka]`` table, reporting every problem through ``report``.

    Relative file paths are taken from ``base_dir`` (the directory of routing.toml), like schema
    files. A problem leaves the option out, so the rest can still be checked.
    """
    protocol = str(raw.get("security_protocol", PLAINTEXT))
    mechanism = raw.get("sasl_mechanism")
    if "sasl_password" in raw:
        report(
            "sasl_password",
            "a password in the file is refused: put it in an environment variable and name "
            'that variable here, e.g. sasl_password_env = "KAFKA_PASSWORD"',
        )
    sasl_keys = [k for k in ("sasl_mechanism", "sasl_username", "sasl_password_env") if k in raw]
    if "oauth_token_provider" in raw:
        sasl_keys.append("oauth_token_provider")
    if protocol in SASL_PROTOCOLS:
        if mechanism is None:
            report(
                "security_protocol",
                f"{protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or "
                "OAUTHBEARER)",
            )
    else:
        for key in sasl_keys:
            report(
                key, f"only used with SASL_PLAINTEXT or SASL_SSL (security_protocol is {protocol})"
            )
    password = None
    if protocol in SASL_PROTOCOLS and mechanism in PASSWORD_MECHANISMS:
        if "sasl_username" not in raw:
            report("sasl_mechanism", f"{mechanism} needs sasl_username")
        if "sasl_password_env" not in raw:
            report(
                "sasl_mechanism",
                f"{mechanism} needs sasl_password_env: the name of the environment variable "
                "holding the password",
            )
        else:
            name = str(raw["sasl_password_env"])
            password = environ.get(name)
            if password is None:
                report("sasl_password_env", f"environment variable {name} is not set")
        if "oauth_token_provider" in raw:
            report("oauth_token_provider", 'only used with sasl_mechanism = "OAUTHBEARER"')
    if protocol in SASL_PROTOCOLS and mechanism == OAUTHBEARER:
        if "oauth_token_provider" in raw:
            _check_module(str(raw["oauth_token_provider"]), report)
        else:
            report(
                "sasl_mechanism",
                'OAUTHBEARER needs oauth_token_provider = "module:callable" (a factory of an '
                "aiokafka AbstractTokenProvider, see docs/operations.md)",
            )
        for key in ("sasl_username", "sasl_password_env"):
            if key in raw:
                report(key, "not used with OAUTHBEARER: the token provider authenticates")

    ssl_keys = [
        k
        for k in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file", "ssl_check_hostname")
        if k in raw
    ]
    files: dict[str, Path] = {}
    if protocol not in SSL_PROTOCOLS:
        for key in ssl_keys:
            report(key, f"only used with SSL or SASL_SSL (security_protocol is {protocol})")
    else:
        for key in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            if key in raw:
                path = Path(str(raw[key]))
                path = path if path.is_absolute() else base_dir / path
                if _readable(path, key, report):
                    files[key] = path
        if ("ssl_cert_file" in raw) != ("ssl_key_file" in raw):
            missing = "ssl_key_file" if "ssl_cert_file" in raw else "ssl_cert_file"
            present = "ssl_cert_file" if "ssl_cert_file" in raw else "ssl_key_file"
            report(
                present,
                f"a client certificate needs both ssl_cert_file and ssl_key_file ({missing} is missing)",
            )
        _check_pem(files, report)

    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=str(mechanism) if protocol in SASL_PROTOCOLS and mechanism else None,
        sasl_username=str(raw["sasl_username"]) if "sasl_username" in raw else None,
        sasl_password_env=str(raw["sasl_password_env"]) if "sasl_password_env" in raw else None,
        sasl_password=password,
        ssl_ca_file=files.get("ssl_ca_file"),
        ssl_cert_file=files.get("ssl_cert_file"),
        ssl_key_file=files.get("ssl_key_file"),
        ssl_check_hostname=bool(raw.get("ssl_check_hostname", True)),
        oauth_token_provider=(
            str(raw["oauth_token_provider"]) if "oauth_token_provider" in raw else None
        ),
    )


def _check_module(spec: str, report: Report) -> None:
    """The provider's module must be importable; found, not run (its code runs at start)."""
    module = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:  # a parent package that cannot be imported
        found = None
        detail = f" ({exc})"
    else:
        detail = ""
    if found is None:
        report(
            "oauth_token_provider",
            f"module {module!r} not found{detail}: is it on PYTHONPATH (or installed)?",
        )


def _readable(path: Path, key: str, report: Report) -> bool:
    try:
        path.read_bytes()
    except OSError as exc:
        report(key, f"cannot read {path}: {exc.strerror or exc}")
        return False
    return True


def _check_pem(files: Mapping[str, Path], report: Report) -> None:
    """Load the files the way the connection will, so a wrong file is a load-time error."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if "ssl_ca_file" in files:
        try:
            context.load_verify_locations(cafile=str(files["ssl_ca_file"]))
        except (ssl.SSLError, ValueError) as exc:
            report("ssl_ca_file", f"not a PEM CA certificate: {exc}")
    if "ssl_cert_file" in files and "ssl_key_file" in files:
        try:
            context.load_cert_chain(str(files["ssl_cert_file"]), str(files["ssl_key_file"]))
        except (ssl.SSLError, ValueError) as exc:
            report(
                "ssl_cert_file",
                f"certificate and key do not load as a PEM pair (an encrypted key is not "
                f"supported): {exc}",
            )
