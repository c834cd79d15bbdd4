"""Twisted server endpoints for broker listeners, with TLS client-certificate support.

Plain strings (``tcp:``, ``unix:``, ``systemd:`` ...) go to Twisted's ``serverFromString``.
``ssl:`` strings are parsed here so that, beyond Twisted's own ``privateKey``/``certKey``/
``extraCertChain``/``dhParameters``, a listener can verify client certificates against a CA
file (``cafile``/``caCertsDir``) and require them (``requireClientCert=yes``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from gateway.asciidigits import ascii_digits
from gateway.endpointstrings import listen_problem, split_description, unescaped_ipv6_problem
from gateway.errors import BrokerError

EndpointFactory = Callable[[Any], IStreamServerEndpoint]
_TRUE = {"yes", "true", "1", "on"}
#: The keywords an ``ssl:`` listener string takes (it is parsed here, not by Twisted).
SSL_KEYWORDS = frozenset({"interface", "backlog", "privateKey", "certKey", "extraCertChain", "dhParameters",
                          "caCertsDir", "cafile", "requireClientCert"})
#: Stands in for the reactor when a description is only parsed (endpoints just keep it);
#: twisted.internet.testing's MemoryReactor would import trial, doctest and unittest into
#: every gateway for that.
_PARSE_ONLY = object()


class Listener(Protocol):
    """What an endpoint is built from (:class:`gateway.broker.settings.ListenerSettings`)."""

    @property
    def endpoint(self) -> str:
        """A Twisted server endpoint string."""

    @property
    def cafile(self) -> str | None:
        """CA certificates (PEM) that client certificates must chain to."""

    @property
    def require_client_cert(self) -> bool:
        """Refuse TLS clients that present no valid certificate."""


class EndpointError(BrokerError):
    """A listener's endpoint string or its TLS files are unusable.

    :param message: what is wrong.
    :param keyword: the endpoint string's keyword the problem is in (``port`` and
        ``interface`` too, for the address), or ``None`` for the string as a whole.
    """

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


def read_tls_file(path: str, what: str, keyword: str) -> bytes:
    """The bytes of the file ``path`` an endpoint string names.

    :param what: what the file holds, for the error (``private key``, ``certificate``...).
    :param keyword: the endpoint keyword that named it.
    :raises EndpointError: it cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EndpointError(f"cannot read {what} {path!r}: {exc.strerror or exc}", keyword) from exc
    except ValueError as exc:  # a NUL in the name
        raise EndpointError(f"cannot read {what} {path!r}: {exc}", keyword) from exc


def load_ca_certificates(cafile: str | None, ca_dir: str | None, cafile_keyword: str = "cafile") -> list[crypto.X509]:
    """Load every PEM certificate from ``cafile`` and from ``*.pem``/``*.crt`` in ``ca_dir``.

    :param cafile_keyword: the endpoint keyword that named ``cafile`` (for errors).
    :raises EndpointError: a file cannot be read or holds no PEM certificate, or ``ca_dir`` is
        not a directory or has no ``*.pem``/``*.crt`` file.
    """
    blobs: list[tuple[str, bytes, str]] = []
    if cafile:
        blobs.append((cafile, read_tls_file(cafile, "CA file", cafile_keyword), cafile_keyword))
    if ca_dir:
        directory = Path(ca_dir)
        if not directory.is_dir():
            raise EndpointError(f"caCertsDir {ca_dir!r} is not a directory", "caCertsDir")
        found = [(str(p), p.read_bytes(), "caCertsDir") for p in sorted(directory.iterdir())
                 if p.suffix in (".pem", ".crt")]
        if not found:  # else client certificates would go unchecked without a word
            raise EndpointError(f"no CA certificates in {ca_dir!r} (no *.pem or *.crt file)", "caCertsDir")
        blobs.extend(found)
    certs: list[crypto.X509] = []
    for name, blob, keyword in blobs:
        try:
            certs.extend(crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(blob))
        except ValueError as exc:
            raise EndpointError(f"no PEM certificate in {name!r}: {exc}", keyword) from exc
    return certs


def client_cert_required(listener: Listener) -> bool:
    """Whether ``listener`` refuses TLS clients without a valid certificate: its
    ``require_client_cert``, or its ``ssl:`` endpoint's ``requireClientCert``."""
    args, kwargs = split_description(listener.endpoint)
    return args[:1] == ["ssl"] and (listener.require_client_cert
                                    or kwargs.get("requireClientCert", "no").lower() in _TRUE)


def server_tls_options(kwargs: dict[str, str], cafile: str | None, require: bool) -> ssl.CertificateOptions:
    """Build the server TLS options for an ``ssl:`` listener.

    :param kwargs: the endpoint string's keyword arguments.
    :param cafile: CA certificates for client verification (from the listener config).
    :param require: refuse clients without a valid certificate (:func:`client_cert_required`).
    """
    private_key = kwargs.get("privateKey", "server.pem")
    key_pem = read_tls_file(private_key, "private key", "privateKey")
    cert_keyword = "certKey" if "certKey" in kwargs else "privateKey"
    cert_pem = read_tls_file(kwargs.get(cert_keyword, private_key), "certificate", cert_keyword)
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:  # encrypted: OpenSSL would ask for its pass phrase on the terminal
        raise EndpointError(f"the private key in {private_key!r} is encrypted: give the listener one without a "
                            "pass phrase", "privateKey") from exc
    except ValueError:
        pass  # not a key cryptography reads: pyOpenSSL's error below says what is wrong
    try:
        pair = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as exc:  # pyOpenSSL raises its own error kinds for bad PEM
        raise EndpointError(f"bad certificate or key: {exc}", "certKey") from exc
    chain = None
    if "extraCertChain" in kwargs:
        chain = load_ca_certificates(kwargs["extraCertChain"], None, "extraCertChain")
    cas = load_ca_certificates(cafile or kwargs.get("cafile"), kwargs.get("caCertsDir"))
    if require and not cas:
        raise EndpointError("requiring client certificates needs cafile or caCertsDir", "requireClientCert")
    extra: dict[str, Any] = {}
    if "dhParameters" in kwargs:
        read_tls_file(kwargs["dhParameters"], "DH parameters file", "dhParameters")
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


def _check_address(args: list[str], kwargs: dict[str, str], description: str) -> None:
    """What Twisted's parser lets through and ``listen`` would refuse (:func:`listen_problem`).

    :raises EndpointError: naming the keyword the problem is in.
    """
    problem = listen_problem(args, kwargs, description)
    if problem is not None:
        raise EndpointError(*problem)


@implementer(IStreamServerEndpoint)
class InheritedSocketEndpoint:
    """A ``systemd:`` listener: the socket systemd handed over, served through a duplicate of it.

    Twisted's own endpoint closes the inherited descriptor once it has adopted it, so the
    broker of a configuration change (the service tree restarts in-process, commands.md)
    found it closed and could not start. A duplicate is adopted instead, at every
    :meth:`listen`: the inherited socket stays open, and listening, for the whole process
    (connections that arrive while the broker restarts wait in its queue).

    :param reactor: the reactor to listen with.
    :param description: the ``systemd:`` endpoint string.
    """

    def __init__(self, reactor: Any, description: str) -> None:
        self._reactor = reactor
        self._description = description

    def listen(self, protocolFactory: IProtocolFactory) -> "Deferred[IListeningPort]":
        """Adopt a duplicate of the inherited socket (closed once adopted, or if adopting fails).

        :raises EndpointError: systemd handed over no socket of that index or name.
        """
        try:
            inherited = serverFromString(self._reactor, self._description)
        except (IndexError, KeyError):  # Twisted's words: "list index out of range"
            raise EndpointError("systemd handed over no such socket (LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES "
                                "name none): start the gateway from its .socket unit") from None
        assert isinstance(inherited, AdoptedStreamServerEndpoint)  # what Twisted makes of systemd:
        duplicate = os.dup(inherited.fileno)
        d: Deferred[IListeningPort] = AdoptedStreamServerEndpoint(
            self._reactor, duplicate, inherited.addressFamily).listen(protocolFactory)

        def not_adopted(failure: Failure) -> Failure:
            os.close(duplicate)
            return failure

        return d.addErrback(not_adopted)


#: The listen queue of a ``tcp:``, ``ssl:`` or ``unix:`` listener whose endpoint names none
#: (Twisted's default, 50, overflows when hundreds of clients connect at once; the kernel
#: caps it at ``net.core.somaxconn``).
DEFAULT_BACKLOG = 1024


def parse_endpoint(listener: Listener) -> EndpointFactory:
    """Check a listener's endpoint and return a factory ``reactor -> endpoint``.

    :raises EndpointError: when the string or its TLS files are unusable.
    """
    unescaped = unescaped_ipv6_problem(listener.endpoint)
    if unescaped:
        raise EndpointError(unescaped, "interface")
    args, kwargs = split_description(listener.endpoint)
    _check_address(args, kwargs, listener.endpoint)
    if args and args[0] == "ssl":
        if len(args) < 2 or not ascii_digits(args[1]):
            raise EndpointError(f"ssl endpoint needs a port: {listener.endpoint!r}", "port")
        unknown = sorted(set(kwargs) - SSL_KEYWORDS)
        if unknown or len(args) > 2:
            raise EndpointError(f"ssl endpoint does not take {', '.join(unknown or args[2:])!s}"
                                f" (it takes {', '.join(sorted(SSL_KEYWORDS))}): {listener.endpoint!r}")
        options = server_tls_options(kwargs, listener.cafile, client_cert_required(listener))
        try:
            options.getContext()  # what the first handshake would do: DH parameters, ciphers
        except Exception as exc:  # pyOpenSSL raises its own kinds
            raise EndpointError(f"TLS settings unusable: {exc}") from exc
        port, interface = int(args[1]), kwargs.get("interface", "")
        backlog = int(kwargs.get("backlog", DEFAULT_BACKLOG))
        return lambda reactor: SSL4ServerEndpoint(reactor, port, options, backlog, interface)
    try:
        if not (args and args[0] == "systemd"):  # its sockets exist only when systemd starts us
            serverFromString(_PARSE_ONLY, listener.endpoint)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise EndpointError(f"not a Twisted server endpoint: {listener.endpoint!r} ({exc})") from exc
    description = listener.endpoint
    if args and args[0] == "systemd":
        return lambda reactor: InheritedSocketEndpoint(reactor, description)
    if args and args[0] in ("tcp", "unix") and "backlog" not in kwargs:
        description += f":backlog={DEFAULT_BACKLOG}"
    return lambda reactor: serverFromString(reactor, description)
