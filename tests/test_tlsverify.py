"""Every TLS client of the gateway refuses a server certificate that is valid for no name, and
says that a certificate refused for its validity window is the clock's doing."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from twisted.internet import reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from gateway.links.http_settings import HTTPLinkSettings
from gateway.links.httpclient import close_connections as close_link_connections, make_link_client
from gateway.netfailures import describe
from gateway.operations.httpclient import close_connections, make_http_client
from tests.tlscerts import make_nameless_server, make_pki, make_server


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class NamelessCertificateTests(TestCase):
    """An https server on 127.0.0.1 whose certificate, from a trusted CA, has the common name
    ``localhost`` and no subjectAltName. Twisted's own hostname check logged
    service-identity's ``CertificateError`` for it and went on: the request reached that
    server whatever name was asked for (gateway/tlsverify.py)."""

    timeout = 20

    def setUp(self) -> None:
        root = Path(self.mktemp())
        self.pki = make_pki(root / "pki")
        nameless = make_nameless_server(root / "nameless", self.pki)
        pem = Path(nameless["server_cert"]).read_bytes() + Path(nameless["server_key"]).read_bytes()
        port = reactor.listenSSL(0, Site(_Hello()), ssl.PrivateCertificate.loadPEM(pem).options(),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"https://localhost:{port.getHost().port}/"

    @inlineCallbacks
    def refused(self, client: Any) -> Any:
        failure = yield self.assertFailure(client.get(self.url), Exception)
        self.assertIn("subjectAltName", repr(getattr(failure, "reasons", failure)))

    @inlineCallbacks
    def test_operations_client(self) -> None:
        """The client of downloads, uploads and the fleet channel refuses it."""
        client = make_http_client(reactor, self.pki["ca"], 1)
        self.addCleanup(close_connections, client)
        yield self.refused(client)

    @inlineCallbacks
    def test_http_link_client(self) -> None:
        """An HTTP link's client refuses it."""
        client = make_link_client(reactor, HTTPLinkSettings(url=self.url, ca_file=self.pki["ca"]))
        self.addCleanup(close_link_connections, client)
        yield self.refused(client)


@implementer(IOpenSSLContextFactory)
class _Switchable:
    """The server's TLS context: that of whichever certificate ``options`` holds at each new connection."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def getContext(self) -> Any:
        """The context of the certificate shown now."""
        return self.options.getContext()


def _options(server: dict[str, str]) -> Any:
    pem = Path(server["server_cert"]).read_bytes() + Path(server["server_key"]).read_bytes()
    return ssl.PrivateCertificate.loadPEM(pem).options()


class CertificateWindowTests(TestCase):
    """An https server on 127.0.0.1 whose certificate, from a trusted CA, is not valid yet or
    has expired by the clock (a gateway without a real-time clock at 1970, or one years ahead).
    OpenSSL says only "certificate verify failed"; every TLS client of the gateway says it is
    the clock: its reading and the certificate's window (gateway/tlsverify.py,
    gateway/certwindow.py). Once the server's certificate is valid, the same client's next
    request succeeds."""

    timeout = 20

    def setUp(self) -> None:
        root = Path(self.mktemp())
        self.pki = make_pki(root / "pki")
        self.now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        day = datetime.timedelta(days=1)
        self.windows = {"future": (self.now + 400 * day, self.now + 800 * day),
                        "expired": (self.now - 800 * day, self.now - 400 * day)}
        self.servers = {name: make_server(root / name, self.pki, name, *window)
                        for name, window in self.windows.items()}
        self.context = _Switchable(_options(self.servers["future"]))
        port = reactor.listenSSL(0, Site(_Hello()), self.context, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"https://localhost:{port.getHost().port}/"

    @inlineCallbacks
    def refused_then_taken(self, client: Any, which: str, state: str) -> Any:
        """The server shows ``which`` certificate: the request fails with the clock's sentence;
        then it shows a valid one, and the next request on the same client is answered."""
        self.context.options = _options(self.servers[which])
        failure = yield self.assertFailure(client.get(self.url), Exception)
        start, end = (t.strftime("%Y-%m-%d %H:%M:%S UTC") for t in self.windows[which])
        self.assertEqual(describe(failure), (
            f"the TLS connection failed: the certificate of the server (CN=localhost) {state} by the gateway's "
            f"clock: it is valid from {start} to {end}, and the clock reads {self.now:%Y-%m-%d}; "
            + ("if the clock is right the server needs a renewed certificate; if it is ahead, set it (NTP)"
               if which == "expired" else
               "if the clock is behind, set it (NTP); if it is right, the certificate is for a later time")))
        self.context.options = _options({"server_cert": self.pki["server_cert"],
                                         "server_key": self.pki["server_key"]})
        response = yield client.get(self.url)
        self.assertEqual((yield response.content()), b"hello")

    @inlineCallbacks
    def test_operations_client(self) -> None:
        """The client of downloads, uploads and the fleet channel: an expired certificate."""
        client = make_http_client(reactor, self.pki["ca"], 1)
        self.addCleanup(close_connections, client)
        yield self.refused_then_taken(client, "expired", "has expired")

    @inlineCallbacks
    def test_http_link_client(self) -> None:
        """An HTTP link's client (the Exosite link): a certificate not valid yet."""
        client = make_link_client(reactor, HTTPLinkSettings(url=self.url, ca_file=self.pki["ca"]))
        self.addCleanup(close_link_connections, client)
        yield self.refused_then_taken(client, "future", "is not valid yet")
