"""A link's TLS endpoint against a real TLS server on 127.0.0.1: which servers it trusts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from service_identity.exceptions import CertificateError

from gateway.errors import LinkError
from gateway.links.causes import describe, peer_of
from gateway.links.endpoint import link_endpoint
from gateway.links.settings import LinkSettings
from tests.tlscerts import make_nameless_server, make_pki


class _Echo(Protocol):
    """Sends back what it gets; ``closed`` fires when its connection has ended."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed.callback(None)


class _Hello(Protocol):
    """Writes ``hello`` and fires ``answered`` with what comes back (errbacks if the
    connection ends first, as a failed TLS handshake ends it); ``closed`` fires when it has
    ended."""

    def __init__(self, answered: Deferred[bytes]) -> None:
        self.answered = answered
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        if not self.answered.called:
            self.answered.callback(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if not self.answered.called:
            self.answered.errback(reason)
        self.closed.callback(None)


class TLSTrustTests(TestCase):
    """The CAs a ``tls:`` link trusts are every certificate in its ``ca_file``."""

    timeout = 20

    def setUp(self) -> None:
        self.echoes: list[_Echo] = []

    def _echo(self) -> _Echo:
        echo = _Echo()
        self.echoes.append(echo)
        return echo

    @inlineCallbacks
    def _exchange(self, settings: LinkSettings) -> Any:
        """Connect through the link's endpoint and fire with the echoed bytes, once both ends
        of the connection have closed."""
        answered: Deferred[bytes] = Deferred()
        client = yield link_endpoint(reactor, settings).connect(Factory.forProtocol(lambda: _Hello(answered)))
        try:
            data = yield answered
        finally:
            client.transport.loseConnection()
            yield client.closed
            yield DeferredList([echo.closed for echo in self.echoes])
        return data

    @inlineCallbacks
    def test_ca_file_with_several_cas(self) -> None:
        """A ca_file holding two CAs trusts a server signed by the second one (docs/links.md:
        a certificate that the CAs in the ca_file do not vouch for is refused; only the first
        was loaded, so a bundle's other CAs vouched for nothing), and still refuses a server
        no CA of the bundle signed."""
        root = Path(self.mktemp())
        pki, other, stranger = make_pki(root / "a"), make_pki(root / "b"), make_pki(root / "c")
        bundle = root / "bundle.pem"
        bundle.write_bytes(Path(other["ca"]).read_bytes() + Path(pki["ca"]).read_bytes())
        for server, expected in ((pki, b"hello"), (stranger, None)):
            port = yield serverFromString(
                reactor, f"ssl:0:interface=127.0.0.1:privateKey={server['server_key']}:certKey={server['server_cert']}",
            ).listen(Factory.forProtocol(self._echo))
            self.addCleanup(port.stopListening)
            settings = LinkSettings(endpoint=f"tls:host=127.0.0.1:port={port.getHost().port}", ca_file=str(bundle))
            if expected is not None:
                self.assertEqual((yield self._exchange(settings)), expected)
            else:
                failure = yield self.assertFailure(self._exchange(settings), Exception)
                self.assertIn("certificate verify failed", str(failure))

    @inlineCallbacks
    def test_certificate_valid_for_no_name_is_refused(self) -> None:
        """docs/links.md: tls: verifies the server certificate for H (or hostname). A server
        whose certificate a trusted CA signed but that carries no subjectAltName (its common
        name localhost) is refused for 127.0.0.1 and for hostname: localhost alike, with a
        cause saying so; Twisted's own check logged service-identity's error and let the
        connection through (the CONNECT, with its credentials, went to that server)."""
        root = Path(self.mktemp())
        pki = make_pki(root / "pki")
        nameless = make_nameless_server(root / "nameless", pki)
        port = yield serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={nameless['server_key']}:certKey={nameless['server_cert']}",
        ).listen(Factory.forProtocol(self._echo))
        self.addCleanup(port.stopListening)
        endpoint = f"tls:host=127.0.0.1:port={port.getHost().port}"
        for hostname in (None, "localhost"):
            settings = LinkSettings(endpoint=endpoint, ca_file=pki["ca"], hostname=hostname)
            failure = yield self.assertFailure(self._exchange(settings), CertificateError)
            self.assertEqual(
                describe(failure, peer_of(endpoint, hostname, pki["ca"])),
                f"TLS certificate verification failed: the certificate of 127.0.0.1:{port.getHost().port} names no "
                f"host (no subjectAltName), so it is valid for none, not for {hostname or '127.0.0.1'}: the server "
                "needs a certificate that carries its name")

    @inlineCallbacks
    def _serve(self, server: dict[str, str]) -> Any:
        """Listen with TLS on 127.0.0.1 with ``server``'s certificate and key; fire with the port number."""
        port = yield serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={server['server_key']}:certKey={server['server_cert']}",
        ).listen(Factory.forProtocol(self._echo))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_ssl_endpoint_refuses_a_certificate_valid_for_no_name(self) -> None:
        """An ``ssl:`` endpoint with ``hostname=`` checks the name as ``tls:`` does: the
        nameless certificate is refused for ``hostname=localhost``, its common name, and a
        certificate for localhost from a CA of that directory is taken. A ``.pem`` there that
        holds no certificate is a LinkError (it escaped as OpenSSL's own error)."""
        root = Path(self.mktemp())
        pki, named = make_pki(root / "pki"), make_pki(root / "named")
        cas = root / "cas"
        cas.mkdir()
        (cas / "ca.pem").write_bytes(Path(pki["ca"]).read_bytes())
        (cas / "other.pem").write_bytes(Path(named["ca"]).read_bytes())
        for server, refused in ((make_nameless_server(root / "nameless", pki), True), (named, False)):
            port = yield self._serve(server)
            exchange = self._exchange(LinkSettings(
                endpoint=f"ssl:host=127.0.0.1:port={port}:hostname=localhost:caCertsDir={cas}"))
            if refused:
                yield self.assertFailure(exchange, CertificateError)
            else:
                self.assertEqual((yield exchange), b"hello")
        (cas / "key.pem").write_bytes(Path(pki["server_key"]).read_bytes())
        with self.assertRaisesRegex(LinkError, "no start line"):
            link_endpoint(reactor, LinkSettings(endpoint=f"ssl:host=127.0.0.1:port=1:hostname=localhost:caCertsDir={cas}"))
