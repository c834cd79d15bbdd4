"""Every TLS client of the gateway refuses a server certificate that is valid for no name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.links.http_settings import HTTPLinkSettings
from gateway.links.httpclient import close_connections as close_link_connections, make_link_client
from gateway.operations.httpclient import close_connections, make_http_client
from tests.tlscerts import make_nameless_server, make_pki


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
