"""TLS for the team server: a private CA and a server certificate signed by it.

The launcher serves HTTPS with a certificate of the operator's or, by default, with one from a
CA generated for this server alone. Clients trust that CA through
`MLFLOW_TRACKING_SERVER_CERT_PATH`, which MLflow's client (requests) and
`cifar_mlflow.reachability` both read. `python -m cifar_mlflow server certificate` writes the
same files for the Docker deployment.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cifar_mlflow.server.account import ServerError, write_private

# Two years: browsers cap publicly trusted certificates lower, but this CA is the team's own.
VALIDITY = datetime.timedelta(days=730)
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertificateFiles:
    """Where the server's certificate chain and key, and the CA clients trust, are."""

    cert: Path
    key: Path
    ca: Path


def certificate_files(folder: Path) -> CertificateFiles:
    return CertificateFiles(folder / "server.pem", folder / "server-key.pem", folder / "ca.pem")


def ensure_certificate(folder: Path, names: list[str]) -> CertificateFiles:
    """The certificate in `folder`, generated (files 0600) when absent, valid for `names`
    plus localhost and 127.0.0.1."""
    files = certificate_files(folder)
    if files.cert.exists() and files.key.exists() and files.ca.exists():
        return files
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cifar-mlflow team server CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    all_names = list(dict.fromkeys([*LOOPBACK_NAMES, *names]))
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_names[0])])
    server_cert = (
        _builder(server_name, ca_name, server_key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in all_names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    # The CA's key signs this one certificate and is then forgotten, so nobody can use it to
    # impersonate another site to the clients that trust this CA.
    for path in (files.cert, files.key, files.ca):
        path.unlink(missing_ok=True)
    write_private(files.key, _pem_key(server_key))
    write_private(files.cert, _pem(server_cert))
    write_private(files.ca, _pem(ca_cert))
    return files


def install_certificate(folder: Path, operator: CertificateFiles) -> CertificateFiles:
    """Copy the operator's certificate chain, key and the CA clients trust into `folder` (0600),
    replacing what was there."""
    files = certificate_files(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for source, target in zip(
        (operator.cert, operator.key, operator.ca), (files.cert, files.key, files.ca), strict=True
    ):
        text = source.read_text()
        if "-----BEGIN " not in text:
            raise ServerError(f"{source} is not a PEM file")
        target.unlink(missing_ok=True)
        write_private(target, text)
    return files


def _builder(subject, issuer, public_key, now: datetime.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
