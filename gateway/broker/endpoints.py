"""Twisted server endpoints for broker listeners, with TLS client-certificate support.

Plain strings (``tcp:``, ``unix:``, ``systemd:`` ...) go to Twisted's ``serverFromString``.
``ssl:`` strings are parsed here so that, beyond Twisted's own ``privateKey``/``certKey``/
``extraCertChain``/``dhParameters``, a listener can verify client certificates against a CA
file (``cafile``/``caCertsDir``) and require them (``requireClientCert=yes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.python.filepath import FilePath

from gateway.broker.settings import ListenerSettings
from gateway.errors import BrokerError

EndpointFactory = Callable[[Any], IStreamServerEndpoint]
_TRUE = {"yes", "true", "1", "on"}
#: Stands in for the reactor when a description is only parsed (endpoints just keep it);
#: twisted.internet.testing's MemoryReactor would import trial, doctest and unittest into
#: every gateway for that.
_PARSE_ONLY = object()


class EndpointError(BrokerError):
    """A listener's endpoint string or its TLS files are unusable."""


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """Split an endpoint string into positional and keyword arguments (``\\:`` escapes a colon)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    args = [p for p in parts if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts if "=" in p)
    return args, kwargs


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EndpointError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from exc


def load_ca_certificates(cafile: str | None, ca_dir: str | None) -> list[crypto.X509]:
    """Load every PEM certificate from ``cafile`` and from ``*.pem``/``*.crt`` in ``ca_dir``."""
    blobs: list[tuple[str, bytes]] = []
    if cafile:
        blobs.append((cafile, _read(cafile, "CA file")))
    if ca_dir:
        directory = Path(ca_dir)
        if not directory.is_dir():
            raise EndpointError(f"caCertsDir {ca_dir!r} is not a directory")
        blobs.extend((str(p), p.read_bytes()) for p in sorted(directory.iterdir())
                     if p.suffix in (".pem", ".crt"))
    certs: list[crypto.X509] = []
    for name, blob in blobs:
        try:
            certs.extend(crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(blob))
        except ValueError as exc:
            raise EndpointError(f"no PEM certificate in {name!r}: {exc}") from exc
    return certs


def tls_options(kwargs: dict[str, str], cafile: str | None, require: bool) -> ssl.CertificateOptions:
    """Build the server TLS options for an ``ssl:`` listener.

    :param kwargs: the endpoint string's keyword arguments.
    :param cafile: CA certificates for client verification (from the listener config).
    :param require: refuse clients without a valid certificate.
    """
    private_key = kwargs.get("privateKey", "server.pem")
    key_pem = _read(private_key, "private key")
    cert_pem = _read(kwargs.get("certKey", private_key), "certificate")
    try:
        pair = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as exc:  # pyOpenSSL raises its own error kinds for bad PEM
        raise EndpointError(f"bad certificate or key: {exc}") from exc
    chain = None
    if "extraCertChain" in kwargs:
        chain = load_ca_certificates(kwargs["extraCertChain"], None)
    cas = load_ca_certificates(cafile or kwargs.get("cafile"), kwargs.get("caCertsDir"))
    require = require or kwargs.get("requireClientCert", "no").lower() in _TRUE
    if require and not cas:
        raise EndpointError("requiring client certificates needs cafile or caCertsDir")
    extra: dict[str, Any] = {}
    if "dhParameters" in kwargs:
        extra["dhParameters"] = ssl.DiffieHellmanParameters.fromFile(FilePath(kwargs["dhParameters"]))
    return ssl.CertificateOptions(
        privateKey=pair.privateKey.original,
        certificate=pair.original,
        extraCertChain=chain,
        verify=bool(cas),
        caCerts=cas or None,
        requireCertificate=require,
        **extra,
    )


def parse_endpoint(listener: ListenerSettings) -> EndpointFactory:
    """Check a listener's endpoint and return a factory ``reactor -> endpoint``.

    :raises EndpointError: when the string or its TLS files are unusable.
    """
    args, kwargs = split_description(listener.endpoint)
    if args and args[0] == "ssl":
        if len(args) < 2 or not args[1].isdigit():
            raise EndpointError(f"ssl endpoint needs a port: {listener.endpoint!r}")
        options = tls_options(kwargs, listener.cafile, listener.require_client_cert)
        port, interface, backlog = int(args[1]), kwargs.get("interface", ""), int(kwargs.get("backlog", 50))
        return lambda reactor: SSL4ServerEndpoint(reactor, port, options, backlog, interface)
    try:
        serverFromString(_PARSE_ONLY, listener.endpoint)
    except (ValueError, TypeError, KeyError) as exc:
        raise EndpointError(f"not a Twisted server endpoint: {listener.endpoint!r} ({exc})") from exc
    description = listener.endpoint
    return lambda reactor: serverFromString(reactor, description)
