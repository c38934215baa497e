"""A throw-away certificate authority for TLS tests: a CA and a server certificate it signs.

Made with ``cryptography`` (already a dependency through the guard's JWT keys), written as PEM
files into a directory the test owns. The server certificate names ``127.0.0.1`` (IP SAN) and
``localhost`` (DNS SAN), so hostname checking passes against the embedded broker's address.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the CA certificate (what a client trusts)
    cert_file: Path  # the server certificate (signed by the CA)
    key_file: Path  # the server's private key (PKCS#8 PEM, unencrypted)
    other_ca_file: Path  # a CA that signed nothing here: trusting only it must fail
    client_cert_file: Path  # a client certificate (mutual TLS), signed by the CA
    client_key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for 127.0.0.1 and localhost, for *usage* (server or client auth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server and a client certificate it signs, and an unrelated CA."""
    ca_key, ca_cert = _ca("edgebridge test CA")
    _other_key, other_cert = _ca("edgebridge unrelated CA")
    key, cert = _leaf(ca_key, ca_cert, "127.0.0.1", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = _leaf(
        ca_key, ca_cert, "edgebridge", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
        other_ca_file=directory / "other-ca.pem",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client-key.pem",
    )
    pki.ca_file.write_bytes(_pem(ca_cert))
    pki.cert_file.write_bytes(_pem(cert))
    pki.key_file.write_bytes(_key_pem(key))
    pki.other_ca_file.write_bytes(_pem(other_cert))
    pki.client_cert_file.write_bytes(_pem(client_cert))
    pki.client_key_file.write_bytes(_key_pem(client_key))
    return pki


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for ``127.0.0.1`` and ``localhost`` (its own CA, so a
    client trusts it by loading the certificate itself) and its key: (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(_name("127.0.0.1"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(_pem(cert))
    key_file.write_bytes(_key_pem(key))
    return cert_file, key_file
