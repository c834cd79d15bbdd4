"""https downloads verify the server's hostname against the trusted CAs."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from gateway.fleet.ddi import DDIClient, DDIError
from gateway.fleet.settings import FleetSettings
from gateway.operations.httpclient import make_http_client as make_operations_client
from gateway.updates.downloader import Downloader
from gateway.updates.errors import AttemptsExhausted
from gateway.updates.httpclient import make_http_client
from gateway.updates.settings import DownloadSettings
from tests.updates.realservers import close_pool
from tests.updates.resources import RangeFile
from tests.updates.test_downloader import run_inline

DATA = b"signed firmware" * 1000


def _certificate(subject: str, issuer_key: ec.EllipticCurvePrivateKey, key: ec.EllipticCurvePrivateKey,
                 issuer: str, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class TLSServer(TestCase):
    """A TLS server on 127.0.0.1 whose certificate names ``localhost`` only."""

    timeout = 20

    def setUp(self) -> None:
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("Test CA", ca_key, ca_key, "Test CA", ca=True)
        leaf = _certificate("localhost", ca_key, key, "Test CA", ca=False)
        self.ca_file = Path(self.mktemp())
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        pem = leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        port = reactor.listenSSL(0, Site(RangeFile(DATA)), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port


class HTTPSTests(TLSServer):
    """Downloads trusting the download ca_file."""

    def fetch(self, host: str) -> Downloader:
        settings = DownloadSettings(ca_file=str(self.ca_file), max_attempts=1)
        http = make_http_client(reactor, settings)
        self.addCleanup(close_pool, http)
        downloader = Downloader(http, reactor, settings, run_inline, lambda n: 0.0)
        return downloader.download(f"https://{host}:{self.port}/f", Path(self.mktemp()), digests={}).result

    @inlineCallbacks
    def test_matching_hostname_is_accepted(self) -> None:
        """The certificate for localhost, from the configured CA, is accepted for localhost."""
        path = yield self.fetch("localhost")
        self.assertEqual(path.read_bytes(), DATA)

    @inlineCallbacks
    def test_other_hostname_is_refused(self) -> None:
        """The same certificate is refused for 127.0.0.1, a name it does not carry."""
        with self.assertRaises(AttemptsExhausted) as caught:
            yield self.fetch("127.0.0.1")
        self.assertIn("the request got no answer: the TLS connection failed: the server's certificate is not "
                      "valid for the host name asked for (check the URL's host and the server's certificate)",
                      str(caught.exception))


class DDITLSMessageTests(TLSServer):
    """The fleet's DDI client says in words why a TLS connection failed, as the downloads do:
    it said 'no answer (ResponseNeverReceived: [<twisted.python.failure.Failure
    OpenSSL.SSL.Error: [('SSL routines', '', 'certificate verify failed')]>])' in the log and
    in the fleet's last_error."""

    @inlineCallbacks
    def poll(self, host: str, ca_file: str | None) -> Any:
        http = make_operations_client(reactor, ca_file, 1)
        self.addCleanup(close_pool, http)
        client = DDIClient(http, reactor, f"https://{host}:{self.port}", "t", "gw", None, timeout=10)
        with self.assertRaises(DDIError) as caught:
            yield client.poll()
        return str(caught.exception)

    @inlineCallbacks
    def test_an_untrusted_certificate(self) -> Any:
        """A certificate no trusted CA signed (the system store's, here)."""
        message = yield self.poll("localhost", None)
        self.assertEqual(message, f"GET https://localhost:{self.port}/t/controller/v1/gw: no answer: the TLS "
                         "connection failed (certificate verify failed: no CA trusted vouches for it); check the "
                         "server's certificate and ca_file")

    @inlineCallbacks
    def test_a_certificate_for_another_name(self) -> Any:
        """A trusted certificate that does not carry the host name asked for."""
        message = yield self.poll("127.0.0.1", str(self.ca_file))
        self.assertEqual(message, f"GET https://127.0.0.1:{self.port}/t/controller/v1/gw: no answer: the TLS "
                         "connection failed: the server's certificate is not valid for the host name asked for "
                         "(check the URL's host and the server's certificate)")


class DDIServerTrustTests(TLSServer):
    """The fleet's ca_file is trusted for artifacts from its DDI server (docs/fleet.md: CAs
    trusted for the server), while other servers keep the downloads' own trust."""

    def fetch_from(self, host: str, ddi_port: int | None = None) -> Downloader:
        """Download from ``host`` with no download ca_file, the CA trusted for the DDI server
        (localhost on the test server's port, or ``ddi_port``) only."""
        settings = DownloadSettings(max_attempts=1)
        http = make_http_client(reactor, settings, FleetSettings(
            enabled=True, base_url=f"https://LOCALHOST:{ddi_port or self.port}", ca_file=str(self.ca_file),
            auth="none").server_ca_files())
        self.addCleanup(close_pool, http)
        downloader = Downloader(http, reactor, settings, run_inline, lambda n: 0.0)
        return downloader.download(f"https://{host}:{self.port}/f", Path(self.mktemp()), digests={}).result

    @inlineCallbacks
    def test_artifact_from_the_ddi_server_trusts_its_ca(self) -> None:
        """An artifact on the DDI server's own host and port is verified against fleet.ca_file
        (it was verified against the system store: a private CA's server could not serve one)."""
        path = yield self.fetch_from("localhost")
        self.assertEqual(path.read_bytes(), DATA)

    @inlineCallbacks
    def test_other_servers_keep_the_download_trust(self) -> None:
        """Another server (here the same host on another port than the DDI server's) is not
        given the fleet's CA."""
        with self.assertRaises(AttemptsExhausted) as caught:
            yield self.fetch_from("localhost", ddi_port=self.port + 1)
        self.assertIn("certificate verify failed", str(caught.exception))

    def test_server_ca_files(self) -> None:
        """Only an enabled fleet on https with a ca_file names its server, port 443 by default."""
        self.assertEqual(FleetSettings(enabled=True, base_url="https://Hawkbit.example/x", ca_file="/ca.pem",
                                       auth="none").server_ca_files(), {("hawkbit.example", 443): "/ca.pem"})
        for settings in (FleetSettings(enabled=False, base_url="https://h", ca_file="/ca.pem"),
                         FleetSettings(enabled=True, base_url="https://h"),
                         FleetSettings(enabled=True, base_url="http://h", ca_file="/ca.pem", allow_http=True)):
            self.assertEqual(settings.server_ca_files(), {})
