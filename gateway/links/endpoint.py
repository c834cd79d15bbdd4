"""Client endpoints for links: Twisted endpoint strings, plus ``tls:`` with files from config.

``tls:host=H:port=P`` connects over TCP and verifies the server's certificate for H (or
the link's ``hostname``) through service-identity, trusting ``ca_file`` (the platform's
CAs when unset) and presenting ``cert_file``/``key_file`` when given.

Under ``gateway.proxy`` the TCP connection of a ``tcp:``, ``tls:`` or ``ssl:`` endpoint is a
CONNECT tunnel through the proxy (:func:`gateway.httpproxy.tunnel_endpoint`), unless its host
is in ``no_proxy``; TLS, and a WebSocket, run in the tunnel as they would on TCP.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.interfaces import (IProtocol, IProtocolFactory, IReactorPluggableNameResolver,
                                         IStreamClientEndpoint)
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.addresses import host_port_text
from gateway.asciidigits import ascii_decimal, ascii_digits
from gateway.endpointstrings import (TLS_DEFAULT_PORT, client_host_port, split_description, tcp_host_port,
                                     unescaped_ipv6_problem)
from gateway.errors import LinkError
from gateway.links.aws_settings import ALPN_MQTT, AWSSettings, region_of
from gateway.portnumbers import port_problem
from gateway.proxysettings import ProxySettings, bypasses
from gateway.tlsverify import NameCheckingCreator


class LinkEndpointSettings(Protocol):
    """The fields of a link's settings that make its endpoint (:class:`gateway.links.settings.LinkSettings`)."""

    @property
    def endpoint(self) -> str:
        """A Twisted client endpoint string, or ``tls:host=...:port=...``."""

    @property
    def ca_file(self) -> str | None:
        """CA certificates (PEM) the server's certificate must chain to."""

    @property
    def cert_file(self) -> str | None:
        """The client certificate (PEM)."""

    @property
    def key_file(self) -> str | None:
        """The client private key (PEM)."""

    @property
    def hostname(self) -> str | None:
        """The name the server certificate must carry."""

    @property
    def aws(self) -> AWSSettings | None:
        """AWS IoT options (ALPN, MQTT over a SigV4-signed WebSocket), or ``None``."""

    @property
    def connect_timeout(self) -> float:
        """Seconds a connection may take to come up (a WebSocket's opening handshake included)."""


def _tls_fields(description: str, args: list[str], fields: dict[str, str]) -> dict[str, str]:
    if args != ["tls"]:
        raise LinkError(f"{description!r}: write tls:host=NAME:port=NUMBER")
    unknown = set(fields) - {"host", "port", "timeout"}
    if unknown or "host" not in fields:
        raise LinkError(f"{description!r}: tls: takes host=, port= and timeout= (TLS files are link keys)")
    return fields


def client_tls_options(settings: LinkEndpointSettings, host: str) -> Any:
    """Client TLS options: hostname verification, CA file, client certificate.

    :raises LinkError: when a file cannot be read or parsed.
    """
    alpn = [ALPN_MQTT.encode()] if settings.aws is not None and settings.aws.alpn else None
    return _tls_creator(settings.hostname or host, [settings.ca_file] if settings.ca_file else None,
                        settings.cert_file, settings.key_file, alpn)


def _tls_creator(name: str, ca_files: list[str] | None, cert_file: str | None, key_file: str | None,
                 alpn: list[bytes] | None = None) -> Any:
    """TLS that trusts every CA certificate in ``ca_files`` (the system's CAs for None), shows
    the client certificate of ``cert_file`` (its key in ``key_file``, else in the same file),
    and refuses a server certificate not valid for ``name`` (:mod:`gateway.tlsverify`).

    :raises LinkError: when a file cannot be read or parsed.
    """
    try:
        trust = None
        if ca_files is not None:  # every CA of a file, not only its first
            trust = ssl.trustRootFromCertificates([
                ssl.Certificate(crypto.X509.from_cryptography(c))
                for path in ca_files for c in x509.load_pem_x509_certificates(Path(path).read_bytes())])
        client = None
        if cert_file:
            key = Path(key_file or cert_file).read_bytes()
            client = ssl.PrivateCertificate.loadPEM(Path(cert_file).read_bytes() + b"\n" + key)
    except (OSError, ValueError, ssl.SSL.Error) as exc:
        raise LinkError(f"TLS files for the link: {exc}") from exc
    return NameCheckingCreator(ssl.optionsForClientTLS(name, trustRoot=trust, clientCertificate=client,
                                                       acceptableProtocols=alpn), name)


#: The keys of an ``ssl:`` client endpoint that configure its TLS, not its TCP connection.
_SSL_KEYS = ("hostname", "certKey", "privateKey", "caCertsDir")


def _ssl_endpoint(reactor: Any, args: list[str], fields: dict[str, str], proxy: ProxySettings) -> IStreamClientEndpoint:
    """An ``ssl:`` client endpoint as Twisted reads one (its TCP keys, the CAs of every
    ``.pem`` file in ``caCertsDir`` else the system's, ``certKey`` with ``privateKey``), but
    with the name check of ``tls:``: Twisted's own lets a certificate that names no host through.
    Its TCP connection goes through ``proxy`` (:func:`_through_proxy`)."""
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")

    plain = ":".join(["tcp", *map(escape, args[1:]),
                      *(f"{escape(key)}={escape(value)}" for key, value in fields.items() if key not in _SSL_KEYS)])
    cas = fields.get("caCertsDir")
    ca_files = None
    if cas is not None:
        try:
            ca_files = sorted(str(p) for p in Path(cas).iterdir() if p.suffix.lower() == ".pem" and p.is_file())
        except OSError as exc:
            raise LinkError(f"TLS files for the link: caCertsDir: {exc}") from exc
    creator = _tls_creator(fields["hostname"], ca_files, fields.get("certKey"), fields.get("privateKey"))
    tcp = _through_proxy(reactor, proxy, *_tcp_target(args[1:], fields))
    return wrapClientTLS(creator, tcp if tcp is not None else clientFromString(reactor, plain))


def _through_proxy(reactor: Any, proxy: ProxySettings, host: str, port: int, timeout: float = 30.0,
                   bind_address: tuple[str, int] | None = None) -> IStreamClientEndpoint | None:
    """The connection to ``host:port`` in the CONNECT tunnel of ``proxy``'s proxy (its own
    connection to the proxy taking ``timeout`` and ``bind_address``), or ``None`` where the link
    connects directly: no proxy, or ``host`` in its ``no_proxy``. :mod:`gateway.httpproxy` is
    imported only here, by a gateway with a proxy."""
    address = proxy.address()
    if address is None or bypasses(proxy.no_proxy, host):
        return None
    from gateway.httpproxy import tunnel_endpoint

    return tunnel_endpoint(reactor, address, host, port, timeout, bind_address)


def link_endpoint(reactor: Any, settings: LinkEndpointSettings,
                  proxy: ProxySettings = ProxySettings()) -> IStreamClientEndpoint:
    """The endpoint a link connects through.

    :param reactor: the reactor.
    :param settings: the link's settings.
    :param proxy: ``gateway.proxy``: a ``tcp:``, ``tls:`` or ``ssl:`` endpoint whose host is not in
        its ``no_proxy`` connects through its proxy's CONNECT tunnel, when it has a proxy.
    :raises LinkError: for an endpoint string Twisted cannot parse or unreadable TLS files.
    """
    endpoint = _stream_endpoint(reactor, settings, proxy)
    if settings.aws is not None and settings.aws.websocket:
        return aws_websocket_endpoint(reactor, settings, endpoint)
    return endpoint


def _endpoint_host_port(settings: LinkEndpointSettings) -> tuple[str, int]:
    """The host and port a ``tls:``, ``tcp:`` or ``ssl:`` endpoint string connects to, read as
    :func:`_stream_endpoint` connects (a ``tls:`` one's port is
    :data:`~gateway.endpointstrings.TLS_DEFAULT_PORT` unless written; ``tcp:host=H:P`` is P).

    :raises LinkError: for another kind, or a port that is not one.
    """
    found = client_host_port(*split_description(settings.endpoint))
    if found is None:
        raise LinkError(f"{settings.endpoint!r}: an AWS WebSocket link needs a tls: or tcp: endpoint")
    host, port = found
    problem = port_problem(port)
    if problem is not None:
        raise LinkError(f"{settings.endpoint!r}: {problem}")
    return host, int(port)


def aws_websocket_endpoint(reactor: Any, settings: LinkEndpointSettings, inner: IStreamClientEndpoint) -> IStreamClientEndpoint:
    """MQTT over WebSocket to AWS IoT: ``wss`` over a ``tls:`` endpoint (``ws`` over another),
    the URL signed with SigV4 (service ``iotdevicegateway``) at each connect.

    :raises LinkError: for credentials that cannot be read or a region that cannot be known.
    """
    from gateway.links import sigv4
    from gateway.links.websocket import WebSocketEndpoint

    aws = settings.aws
    assert aws is not None and aws.credentials_file is not None
    host, port = _endpoint_host_port(settings)
    name = aws.host or settings.hostname or host
    region = aws.region or region_of(name) or region_of(host)  # the endpoint's host when aws.host has none
    if not region:
        names = " or ".join(repr(n) for n in dict.fromkeys((name, host)))
        raise LinkError(f"aws.region: cannot be read from {names}; set it")
    try:
        credentials = sigv4.read_credentials(aws.credentials_file, aws.profile)
    except ValueError as exc:
        raise LinkError(f"aws.credentials_file: {exc}") from None
    scheme = "wss" if settings.endpoint.startswith("tls:") else "ws"
    # An IPv6 address goes into the URL in brackets (autobahn refuses the URL without them),
    # and is signed as the Host header is written, host:port with them.
    authority = host_port_text(name, port)

    def url() -> str:
        query = sigv4.presign(credentials, authority, aws.path, region, "iotdevicegateway", reactor.seconds())
        return f"{scheme}://{authority}{aws.path}?{query}"

    return WebSocketEndpoint(inner, url, reactor, settings.connect_timeout)


def _stream_endpoint(reactor: Any, settings: LinkEndpointSettings, proxy: ProxySettings) -> IStreamClientEndpoint:
    description = settings.endpoint
    unescaped = unescaped_ipv6_problem(description)
    if unescaped:
        raise LinkError(unescaped)
    args, fields = split_description(description)
    found = client_host_port(args, fields)
    # (Twisted's int() reads ٨٨٨٣ as 8883, 8_883 too, and fails on ²; it takes any whole number, and
    # the connection fails at connect)
    port_wrong = port_problem(found[1]) if found and found[1] else None
    if port_wrong is not None:
        raise LinkError(f"{description!r}: {port_wrong}")
    timeout_problem = _timeout_problem(args, fields)
    if timeout_problem:
        raise LinkError(f"{description!r}: {timeout_problem}")
    if description.startswith("tls:"):
        fields = _tls_fields(description, args, fields)
        try:
            port = int(fields.get("port", TLS_DEFAULT_PORT))
        except ValueError as exc:
            raise LinkError(f"{description!r}: {exc}") from None
        timeout = float(fields.get("timeout", "30"))
        tcp = _through_proxy(reactor, proxy, fields["host"], port, timeout)
        if tcp is None:
            tcp = HostnameEndpoint(reactor, fields["host"], port, timeout=timeout)
        return wrapClientTLS(client_tls_options(settings, fields["host"]), tcp)
    if args[:1] == ["ssl"] and "hostname" not in fields:
        # Twisted's ssl: client checks the server's certificate only for a hostname=: without
        # one it would talk TLS to anyone (docs/links.md: tls: verifies for H).
        raise LinkError(f"{description!r}: an ssl: endpoint without hostname= verifies no server certificate; "
                        "write tls:host=NAME:port=NUMBER")
    try:
        endpoint = clientFromString(reactor, description)
        if args[:1] == ["ssl"]:  # (parsed by Twisted first: its errors for a bad string or files)
            endpoint = _ssl_endpoint(reactor, args, fields, proxy)
        elif args[:1] == ["tcp"]:
            endpoint = _tcp_endpoint(reactor, endpoint, args[1:], fields, proxy)
    except (ValueError, TypeError, KeyError, crypto.Error) as exc:  # (crypto: a caCertsDir .pem that is no certificate)
        raise LinkError(f"{description!r} is not a Twisted client endpoint: {exc}") from exc
    return endpoint


def _timeout_problem(args: list[str], fields: dict[str, str]) -> str | None:
    """Why the ``timeout=`` of a ``tls:``, ``tcp:``, ``ssl:`` or ``unix:`` client endpoint (its
    positional and keyword arguments, :func:`split_description`'s) cannot be one (``None`` when it
    can, or is not written), in one wording whatever is wrong, as a port's: it is a positive number of seconds written in ASCII digits, whole but for ``tls:``
    (Twisted reads the others with ``int()``). ``float()`` and ``int()`` read other scripts' digits
    (``٣``) as numbers, and ``float()`` ``nan``, ``inf``, ``1e3`` and ``1_0`` too; with 0 or less every
    connection attempt would time out at once, for ever, said as a host that does not answer."""
    written = fields.get("timeout")
    if written is None or args[:1] not in (["tls"], ["tcp"], ["ssl"], ["unix"]):
        return None
    tls = args[:1] == ["tls"]
    if (ascii_decimal(written) if tls else ascii_digits(written)) and float(written) > 0:
        return None
    return f"timeout= takes a positive {'' if tls else 'whole '}number of seconds, not {written!r}"


def _tcp_target(positional: list[str], fields: dict[str, str]) -> tuple[str, int, int, tuple[str, int] | None]:
    """The host, port, ``timeout=`` (whole seconds) and ``bindAddress=`` of a ``tcp:`` (or
    ``ssl:``) client endpoint that Twisted parsed already, read as Twisted reads them:
    ``tcp:HOST:PORT``, ``tcp:host=H:port=P``, ``tcp:host=H:P``.

    :raises LinkError: ``bindAddress=`` is not an IP address.
    """
    host, port = tcp_host_port(positional, fields)
    bind = fields.get("bindAddress")
    if bind is not None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:  # (a name would be looked up on the reactor thread at each connection)
            raise LinkError(f"bindAddress= takes an IP address of the gateway, not {bind!r}") from None
    return host, int(port), int(fields.get("timeout", "30")), (bind, 0) if bind is not None else None


def _tcp_endpoint(reactor: Any, parsed: IStreamClientEndpoint, positional: list[str],
                  fields: dict[str, str], proxy: ProxySettings) -> IStreamClientEndpoint:
    """A ``tcp:`` client endpoint that Twisted parsed already (``parsed``): through ``proxy``
    (:func:`_through_proxy`); else as it is for an IP address, a ``HostnameEndpoint`` (as
    ``tls:`` connects) for a host name. Twisted's own (``TCP4ClientEndpoint``) resolves a name
    to its IPv4 addresses only and tries the first, so a cloud whose name has only IPv6
    addresses was a 'DNS lookup failed', and one listening on only one of its name's addresses
    was missed; ``HostnameEndpoint`` tries them all, IPv6 and IPv4 (happy eyeballs)."""
    host, port, timeout, bind = _tcp_target(positional, fields)
    tunnel = _through_proxy(reactor, proxy, host, port, timeout, bind)
    if tunnel is not None:
        return tunnel
    try:
        ipaddress.ip_address(host)
        return parsed
    except ValueError:
        pass
    return HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """An endpoint that tells ``on_failure`` why each connection attempt failed.

    ``ClientService`` only retries; the link shows the reason in its status.

    :param endpoint: the endpoint connections go through.
    :param on_failure: called with the failure of each attempt (not with cancellations).
    """

    def __init__(self, endpoint: IStreamClientEndpoint, on_failure: Callable[[Failure], None]) -> None:
        self.endpoint = endpoint
        self.on_failure = on_failure

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect through the wrapped endpoint, reporting a failure before passing it on."""
        d: Deferred[IProtocol] = self.endpoint.connect(protocolFactory)

        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self.on_failure(failure)
            return failure

        return d.addErrback(failed)


def _read_pem(path: str) -> tuple[bytes | None, str | None]:
    try:
        return Path(path).read_bytes(), None
    except OSError as exc:
        return None, f"cannot read {path!r}: {exc.strerror or exc}"


def _tls_file_problems(settings: LinkEndpointSettings) -> Iterator[tuple[tuple[str, ...], str]]:
    """Each TLS file read and parsed as the link will, so a problem names its key."""
    if settings.ca_file:
        data, problem = _read_pem(settings.ca_file)
        if data is not None:
            try:
                x509.load_pem_x509_certificates(data)
            except ValueError:
                problem = f"no PEM certificate in {settings.ca_file!r}"
        if problem:
            yield ("ca_file",), problem
    if settings.key_file and not settings.cert_file:
        yield ("key_file",), "needs cert_file (the client certificate it belongs to)"
    if not settings.cert_file:
        return
    cert = None
    data, problem = _read_pem(settings.cert_file)
    if problem:
        yield ("cert_file",), problem
    else:
        try:
            cert = x509.load_pem_x509_certificate(data or b"")
        except ValueError:
            yield ("cert_file",), f"no PEM certificate in {settings.cert_file!r}"
    if cert is None and not settings.key_file:
        return  # (the key would be in the certificate's file, already refused)
    # A key_file of its own is checked even when the certificate is refused: both made root's
    # alone (mode 0600, the packaged gateway runs as user gateway) are told at once.
    key_path, key_key = (settings.key_file, "key_file") if settings.key_file else (settings.cert_file, "cert_file")
    key_data, problem = _read_pem(key_path)
    if problem:
        yield (key_key,), problem
        return
    try:
        key = serialization.load_pem_private_key(key_data or b"", password=None)
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        yield (key_key,), f"no usable PEM private key in {key_path!r}: {exc}"
        return
    if cert is None:
        return
    raw = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        yield (key_key,), f"the key in {key_path!r} does not belong to the certificate in {settings.cert_file!r}"


@dataclass(frozen=True)
class _WithoutFiles:
    """A link's endpoint settings without its TLS files, to check its endpoint string alone."""

    endpoint: str
    hostname: str | None
    aws: AWSSettings | None
    ca_file: None = None
    cert_file: None = None
    key_file: None = None
    connect_timeout: float = 30.0


@implementer(IReactorPluggableNameResolver)
class _ParseOnlyReactor:
    """Stands in for the reactor when an endpoint is only built to check it (endpoints just keep
    it; nothing connects). twisted.internet.testing's MemoryReactor would import trial, doctest
    and unittest into every gateway for that; ``HostnameEndpoint`` only asks for a name resolver.
    """

    nameResolver = None

    def installNameResolver(self, resolver: Any) -> Any:
        """Never called: a check resolves no name."""
        raise NotImplementedError("an endpoint built only to be checked resolves no name")

    def seconds(self) -> float:
        """No clock: a check never signs a URL."""
        return 0.0


def endpoint_problems(settings: LinkEndpointSettings) -> Iterator[tuple[tuple[str, ...], str]]:
    """Why the link could not build its endpoint at start, each with its key (for config checks).

    The TLS files are read and parsed now; then :func:`link_endpoint` is built as at start
    (against a stand-in reactor: nothing connects), without the TLS files when they have
    problems and without the ``aws:`` options when those have problems of their own (those
    are reported at their keys).
    """
    tls = settings.endpoint.startswith("tls:")
    if not tls:
        for key in ("ca_file", "cert_file", "key_file", "hostname"):
            if getattr(settings, key) is not None:
                yield (key,), "only a tls: endpoint uses it (write tls:host=NAME:port=NUMBER)"
    problems = list(_tls_file_problems(settings)) if tls else []
    yield from problems
    aws_problems = settings.aws is not None and any(True for _ in settings.aws.config_problems())
    # the endpoint string is checked beside the problems of the TLS files and of aws: (every
    # problem at once): then without the files (read above) and without aws: if it has problems
    parsed = settings
    if problems or aws_problems:
        parsed = _WithoutFiles(settings.endpoint, settings.hostname, None if aws_problems else settings.aws)
    try:
        link_endpoint(_ParseOnlyReactor(), parsed)
    except Exception as exc:  # Twisted's parsers and pyOpenSSL raise many kinds; each is the config's
        message = str(exc) if isinstance(exc, LinkError) else f"{type(exc).__name__}: {exc}"
        # A hostname that is no host name (a space, say) fails the endpoint's TLS options: the
        # problem is the hostname's when the endpoint builds without it (it was put on endpoint).
        key = "hostname" if tls and settings.hostname is not None and _builds(
            _WithoutFiles(settings.endpoint, None, parsed.aws)) else "endpoint"
        yield (key,), message


def _builds(settings: LinkEndpointSettings) -> bool:
    """Whether :func:`link_endpoint` builds an endpoint of ``settings`` (nothing connects)."""
    try:
        link_endpoint(_ParseOnlyReactor(), settings)
    except Exception:  # (as endpoint_problems: many kinds)
        return False
    return True


def full_jitter_backoff(initial: float, factor: float, cap: float,
                        uniform: Callable[[float, float], float] = random.uniform) -> Callable[[int], float]:
    """A ``ClientService`` retry policy: a delay drawn from ``[0, min(cap, initial * factor**n)]``.

    Twisted's ``backoffPolicy`` only adds jitter on top of the exponential delay; full
    jitter (as in Kanto and AWS's advice) spreads a fleet's reconnects over the whole range.
    """

    def policy(attempt: int) -> float:
        ceiling = cap if attempt > 64 else min(cap, initial * factor ** attempt)
        return uniform(0.0, ceiling)

    return policy
