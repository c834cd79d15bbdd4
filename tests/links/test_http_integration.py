"""End to end over real sockets: a GWE-style app POSTs to the gateway's ingest, the HTTP link
forwards to an Exosite-like server that drops, fails, throttles, stalls and revokes the CIK."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.links.exositeserver import ExositeAPI
from tests.ports import free_port

APP = Path(__file__).resolve().parents[2] / "examples" / "gwe_app" / "gwe_app.py"
MIN_INTERVAL = 0.2


@inlineCallbacks
def until(condition: Any, limit: float = 30.0) -> Any:
    """Wait (polling every 50 ms) until ``condition()`` holds; fail after ``limit`` seconds."""
    deadline = reactor.seconds() + limit
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        yield deferLater(reactor, 0.05, lambda: None)


@inlineCallbacks
def start_gateway(case: TestCase, cloud: ExositeAPI, link: str) -> Any:
    """A gateway whose HTTP link ``murano`` goes to ``cloud`` (served on a free port), with
    ``link``'s YAML lines added to the link; fires with ``(root service, ingest port)``."""
    work = Path(case.mktemp()).resolve()
    work.mkdir()
    port = yield reactor.listenTCP(0, Site(cloud), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    case.addCleanup(cloud.close)
    ingest = free_port()
    path = work / "gateway.yaml"
    path.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n  device_id: gw1\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
        f"ingest:\n  endpoint: 'tcp:{ingest}:interface=127.0.0.1'\n"
        "telemetry:\n  metrics_endpoint: ''\n"
        "http_links:\n  links:\n    murano:\n"
        f"      url: 'http://127.0.0.1:{port.getHost().port}'\n"
        "      vendor: acme\n      model: box\n"
        f"      min_interval: {MIN_INTERVAL}\n      backoff_initial: 0.1\n      backoff_max: 0.5\n" + link)
    root = build_service(gateway_config.load(path), reactor)
    yield root.startService()
    case.addCleanup(root.stopService)
    return root, ingest


@inlineCallbacks
def write_values(case: TestCase, ingest: int, bodies: tuple[str, ...]) -> Any:
    """Write each of ``bodies`` (``alias=value``) through the ingest as device gw1, each answered 204."""
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    for body in bodies:
        response = yield client.post(f"http://127.0.0.1:{ingest}/onep:v1/stack/alias", data=body.encode(),
                                     headers={"X-Exosite-VMS": "acme box gw1",
                                              "Content-Type": "application/x-www-form-urlencoded"})
        case.assertEqual(response.code, 204)
        yield treq.content(response)


class GWEAppEndToEndTests(TestCase):
    """A GWE app, unchanged, through the ingest, the journal and the HTTP link to the cloud."""

    timeout = 90

    @inlineCallbacks
    def test_gwe_app_data_reaches_the_cloud_through_failures(self):
        """Every write arrives once the faults pass, in order, never faster than min_interval;
        a cloud write to the downlink alias comes down as a local command. (The spacing of each
        pair of requests is pinned with a fake clock in test_httplink; over real sockets the
        server sees the requests' arrival, so only the overall rate is checked here.)"""
        cloud = ExositeAPI(reactor, devices=(("acme", "box", "gw1"),))
        root, ingest = yield start_gateway(self, cloud, "      serial: '{device}'\n      batch_wait: 0.1\n"
                                           "      request_timeout: 1.0\n      poll_timeout_ms: 2000\n"
                                           "      downlink:\n        - {alias: reboot}\n")
        commands: list[Any] = []
        root.parts.broker.bus.subscribe("command//gw1/req//reboot", commands.append)
        cloud.fail("drop")
        cloud.fail("500")
        cloud.fail("429", 1, 1)
        cloud.fail("slow", 1, 3)

        def app(start: int) -> Deferred[Any]:
            return getProcessOutputAndValue(sys.executable, [
                str(APP), "--url", f"http://127.0.0.1:{ingest}", "--count", "20", "--start", str(start),
                "--interval", "0.02", "--vms", "acme box gw1"], reactor=reactor)

        out, err, code = yield app(0)
        self.assertEqual((code, out), (0, b"20 writes stored\n"), err)
        yield until(lambda: len(cloud.sequence("counter")) >= 20)
        cloud.revoke()
        out, err, code = yield app(20)
        self.assertEqual(code, 0, err)
        yield until(lambda: len(cloud.sequence("counter")) >= 40)
        self.assertEqual(cloud.sequence("counter"), [str(i) for i in range(40)])
        self.assertEqual(cloud.sequence("temperature")[:5], ["20", "21", "22", "23", "24"])
        self.assertGreaterEqual(cloud.activations, 2)  # after the revoke
        posts = [t for t, method, _ in cloud.requests if method == "POST"]
        self.assertLessEqual(len(posts) - 1, (posts[-1] - posts[0]) / MIN_INTERVAL + 1, posts)
        cloud.set_value("reboot", "now")
        yield until(lambda: commands)
        self.assertEqual(commands[0].payload, b"now")
        # The device_info report sent at start went up on Gateway Engine's alias.
        yield until(lambda: cloud.sequence("device_info"))
        self.assertEqual(json.loads(cloud.sequence("device_info")[0])["report"], "device_info")
        # The ingest's reads see what the cloud wrote.
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = yield client.get(f"http://127.0.0.1:{ingest}/onep:v1/stack/alias?reboot",
                                    headers={"X-Exosite-VMS": "acme box gw1"})
        self.assertEqual((yield treq.content(response)), b"reboot=now")


class RefusedRecordsTests(TestCase):
    """Over real sockets, a gateway's HTTP link and records the cloud refuses for good."""

    timeout = 60

    @inlineCallbacks
    def test_refused_records_are_counted_and_the_rest_arrives(self):
        """Writes through the ingest: one to an alias the product does not have (404), one too
        large for the proxy in front of the platform, which closes the connection without an
        answer; both are in the journal's loss ledger (refused-by-cloud, over-cloud-limit),
        and the writes around them arrive, in order (they waited behind them for ever)."""
        cloud = ExositeAPI(reactor, devices=(("acme", "box", "gw1"),))
        cloud.aliases = {"temp"}
        cloud.max_body = 2000
        cloud.close_on_large = True
        # Telemetry only: the gateway's reports, over max_body, would be refused too.
        root, ingest = yield start_gateway(self, cloud, "      batch_wait: 0.5\n      request_timeout: 2.0\n"
                                           "      routes: [{filter: 'telemetry/#', topic: '{#}'}]\n")
        yield write_values(self, ingest, ("temp=1", "bogus=x", "temp=" + "z" * 3000, "temp=2"))
        stream = root.parts.journal.stream("link-murano")
        yield until(lambda: stream.unacked("cloud") == 0)
        self.assertEqual(cloud.sequence("temp"), ["1", "2"])
        self.assertEqual(stream.loss_report().totals, {"refused-by-cloud": 1, "over-cloud-limit": 1})

    @inlineCallbacks
    def test_one_record_batches_pass_a_refused_record(self):
        """batch_records 1 over the real journal: a write the platform refuses (400) waited for
        ever, and every write after it behind it. The next write is its probe, read on from
        the journal without moving the cursor: taken, the refused one is in the loss ledger
        (refused-by-cloud) and the others arrive, in order. The product is no Gateway Engine
        product: the device_info report sent at start (default routes) is refused (404) and
        counted as lost at once, sent once, and the link stays up."""
        cloud = ExositeAPI(reactor, devices=(("acme", "box", "gw1"),))
        cloud.aliases = {"temp"}
        cloud.refuse("bad", 400)
        root, ingest = yield start_gateway(self, cloud, "      batch_records: 1\n      batch_wait: 0.1\n"
                                           "      request_timeout: 2.0\n")
        stream = root.parts.journal.stream("link-murano")
        yield until(lambda: stream.loss_report().totals)  # (the device_info report)
        yield write_values(self, ingest, ("temp=1", "temp=bad", "temp=2", "temp=3"))
        yield until(lambda: stream.unacked("cloud") == 0)
        self.assertEqual(cloud.sequence("temp"), ["1", "2", "3"])
        reports = [path for _, _, path in cloud.requests if not path.endswith("/temp") and "stack/alias/" in path]
        self.assertEqual(len(reports), len(set(reports)), reports)  # (each alias written to once)
        self.assertTrue(reports)
        self.assertEqual(set(stream.loss_report().totals), {"refused-by-cloud"})
        self.assertGreaterEqual(stream.loss_report().totals["refused-by-cloud"], 1 + len(reports))
        self.assertTrue(root.parts.links.links["murano"].is_connected)


class TLSTests(TestCase):
    """The link's client verifies the server: trusted through ca_file, refused otherwise."""

    timeout = 30

    @inlineCallbacks
    def test_ca_file_trusted_and_other_ca_refused(self):
        """Activation over https works with the server's CA, fails with another CA."""
        from twisted.internet import ssl

        from gateway.links.exosite import CloudAPI, RequestFailed
        from gateway.links.http_settings import HTTPLinkSettings
        from gateway.links.httpclient import close_connections, make_link_client
        from tests.tlscerts import make_pki

        work = Path(self.mktemp()).resolve()
        pki, other = make_pki(work / "pki"), make_pki(work / "other")
        pem = Path(pki["server_cert"]).read_bytes() + Path(pki["server_key"]).read_bytes()
        cloud = ExositeAPI(reactor)
        port = yield reactor.listenSSL(0, Site(cloud), ssl.PrivateCertificate.loadPEM(pem).options(),
                                       interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"https://localhost:{port.getHost().port}"
        trusted = make_link_client(reactor, HTTPLinkSettings(ca_file=pki["ca"]))
        self.addCleanup(close_connections, trusted)
        cik = yield CloudAPI(trusted, url, reactor, 10).activate("acme", "box", "gw1")
        self.assertEqual(len(cik), 40)
        stranger = make_link_client(reactor, HTTPLinkSettings(ca_file=other["ca"]))
        self.addCleanup(close_connections, stranger)
        with self.assertRaises(RequestFailed) as caught:
            yield CloudAPI(stranger, url, reactor, 10).activate("acme", "box", "gw1")
        # in words, not "no answer: [<twisted.python.failure.Failure OpenSSL.SSL.Error: [('SSL routines', ..."
        self.assertEqual(str(caught.exception), "no answer: the TLS connection failed (certificate verify failed: "
                         "no CA trusted vouches for it); check the server's certificate and ca_file")
        self.assertEqual(cloud.activations, 1)

    @inlineCallbacks
    def test_snapshot_reports_the_server_certificate_of_the_last_connection(self):
        """An https link's snapshot lists, beside its CA file, the certificate the server
        presented on its last TLS connection (subject and expiry), as an MQTT link's does."""
        from cryptography import x509
        from twisted.internet import ssl
        from twisted.internet.defer import succeed

        from gateway.links.http_settings import HTTPLinkSettings
        from gateway.links.httplink import HTTPLink
        from gateway.links.httpclient import make_link_client
        from tests.links.memory import MemoryStream
        from tests.tlscerts import make_pki

        work = Path(self.mktemp()).resolve()
        pki = make_pki(work / "pki")
        pem = Path(pki["server_cert"]).read_bytes() + Path(pki["server_key"]).read_bytes()
        port = yield reactor.listenSSL(0, Site(ExositeAPI(reactor)), ssl.PrivateCertificate.loadPEM(pem).options(),
                                       interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        settings = HTTPLinkSettings(url=f"https://localhost:{port.getHost().port}", ca_file=pki["ca"],
                                    vendor="acme", model="box", serial="gw1", min_interval=0.0)
        link = HTTPLink("cloud", settings, MemoryStream("link-cloud"), reactor, ("t", "gw1"),
                        make_link_client(reactor, settings), lambda *a: succeed(None), lambda *a: None,
                        work / "cloud.cik", lambda f, *a: succeed(f(*a)))
        self.assertEqual([c.role for c in link.snapshot().certificates], ["link cloud ca"])
        yield link.start()
        self.addCleanup(link.stop)
        yield until(lambda: link.is_connected)
        server = x509.load_pem_x509_certificate(Path(pki["server_cert"]).read_bytes())
        seen = {c.role: c for c in link.snapshot().certificates}
        self.assertEqual(sorted(seen), ["link cloud ca", "link cloud server"])
        self.assertEqual((seen["link cloud server"].subject, seen["link cloud server"].path), ("CN=localhost", ""))
        self.assertEqual(seen["link cloud server"].not_after, server.not_valid_after_utc.timestamp())
        self.assertGreater(seen["link cloud server"].days_left, 0)
