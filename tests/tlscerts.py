"""Certificates made on the fly for TLS tests: a CA, a server certificate, a client certificate."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_pki(directory: Path) -> dict[str, str]:
    """Write ``ca.pem``, ``server.pem/.key`` (for 127.0.0.1 and localhost) and ``client.pem/.key``.

    :return: the paths by name: ca, server_cert, server_key, client_cert, client_key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write(directory, "ca", ca, ca_key)
    for stem, common_name, usage in (("server", "localhost", x509.ExtendedKeyUsageOID.SERVER_AUTH),
                                     ("client", "device-1", x509.ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if stem == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)
    return {
        "ca": str(directory / "ca.pem"),
        "server_cert": str(directory / "server.pem"), "server_key": str(directory / "server.key"),
        "client_cert": str(directory / "client.pem"), "client_key": str(directory / "client.key"),
    }


def make_nameless_server(directory: Path, pki: dict[str, str]) -> dict[str, str]:
    """Write ``nameless.pem/.key``: a server certificate signed by ``pki``'s CA whose common
    name is ``localhost`` but which carries no subjectAltName (so it is valid for no name).

    :return: its paths: server_cert, server_key.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    return make_server(directory, pki, "nameless", now - datetime.timedelta(days=1), now + datetime.timedelta(days=2),
                       named=False)


def make_server(directory: Path, pki: dict[str, str], stem: str, not_before: datetime.datetime,
                not_after: datetime.datetime, named: bool = True) -> dict[str, str]:
    """Write ``<stem>.pem/.key``: a server certificate for ``localhost`` signed by ``pki``'s
    CA, valid from ``not_before`` to ``not_after`` (one not valid yet, or expired, by the
    clock), with the subjectAltNames localhost and 127.0.0.1 when ``named``.

    :return: its paths: server_cert, server_key.
    """
    ca = x509.load_pem_x509_certificate(Path(pki["ca"]).read_bytes())
    ca_key = serialization.load_pem_private_key((Path(pki["ca"]).parent / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if named:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory, stem, cert, key)
    return {"server_cert": str(directory / f"{stem}.pem"), "server_key": str(directory / f"{stem}.key")}
