"""The link status says why a link is down in a sentence a user can act on, not a Python repr."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from service_identity.exceptions import DNSMismatch, VerificationError
from service_identity.hazmat import DNS_ID
from twisted.internet import error, protocol, reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.certwindow import CertificateTimeError
from gateway.clockstep import CLOCK_SET_SINCE
from gateway.links.causes import Peer, describe, peer_of
from gateway.links.protocol import MQTTClientProtocol, SessionOptions
from gateway.links.service import LinksService
from gateway.links.settings import LinkSettings, LinksSettings, RouteSettings
from tests.broker.harness import start_broker
from tests.links.memory import MemoryJournal
from tests.links.mosquitto import Mosquitto
from tests.ports import free_port
from tests.tlscerts import make_pki

TCP = peer_of("tcp:host=127.0.0.1:port=1883")
TLS = peer_of("tls:host=mqtt.example.com:port=8883", ca_file="/etc/gateway/ca.pem")


class PeerTests(SynchronousTestCase):
    """Where a link connects, read from its endpoint string."""

    def test_endpoint_strings(self) -> None:
        """Named and positional tcp:, tls: (default port, hostname), unix: paths."""
        self.assertEqual(peer_of("tcp:host=h:port=1"), Peer("h:1", "h"))
        self.assertEqual(peer_of("tcp:h:1"), Peer("h:1", "h"))
        self.assertEqual(peer_of("tls:host=h", hostname="n"), Peer("h:8883", "h", True, "n"))
        self.assertEqual(peer_of("unix:path=/run/m.sock"), Peer("/run/m.sock", "/run/m.sock", unix=True))
        self.assertEqual(peer_of("unix:/run/m.sock"), Peer("/run/m.sock", "/run/m.sock", unix=True))

    def test_port_read_as_twisted_reads_it(self) -> None:
        """``tcp:host=H:P`` connects to port P (Twisted reads the one positional as the port when
        ``host=`` is written): its peer is ``H:P``, where a link's status said ``H:?``; so is an
        ``ssl:`` one's."""
        self.assertEqual(peer_of("tcp:host=h:1"), Peer("h:1", "h"))
        self.assertEqual(peer_of("ssl:host=h:1:hostname=h"), Peer("h:1", "h"))

    def test_ipv6_addresses(self) -> None:
        """An IPv6 address written with Twisted's escaped colons (``\\:``) is read whole and
        shown as ``[address]:port``; the peer was ``\\:18830``, host ``\\``, so a link's status
        said "connection refused by \\:18830"."""
        self.assertEqual(peer_of(r"tcp:host=\:\:1:port=18830"), Peer("[::1]:18830", "::1"))
        self.assertEqual(peer_of(r"tcp:\:\:1:18830"), Peer("[::1]:18830", "::1"))
        self.assertEqual(peer_of(r"tls:host=fd00\:\:7"), Peer("[fd00::7]:8883", "fd00::7", True, "fd00::7"))
        self.assertEqual(describe(Failure(error.ConnectionRefusedError()), peer_of(r"tcp:host=\:\:1:port=18830")),
                         "connection refused by [::1]:18830: nothing listens there (check the endpoint's host and port)")


class DescribeTests(SynchronousTestCase):
    """Each kind of failure seen from real connections, as a sentence."""

    def check(self, exc: BaseException, peer: Peer, expected: str, accepted: bool = False) -> None:
        self.assertEqual(describe(Failure(exc), peer, accepted), expected)
        self.assertNotIn("Error(", expected)

    def test_connecting(self) -> None:
        """Refused, DNS, timeouts, no route, anything else."""
        self.check(error.ConnectionRefusedError("Connection refused"), TCP,
                   "connection refused by 127.0.0.1:1883: nothing listens there (check the endpoint's host and port)")
        self.check(error.DNSLookupError("no results for hostname lookup: mqtt.example.com"), TLS,
                   "DNS lookup failed for mqtt.example.com: check the host name and the gateway's DNS")
        self.check(error.TimeoutError(), TLS,
                   "no answer from mqtt.example.com:8883: connecting timed out (a firewall, or the host is down)")
        self.check(error.NoRouteError(), TCP, "no route to 127.0.0.1:1883: check the gateway's network")
        self.check(OSError("weird"), TCP, "cannot connect to 127.0.0.1:1883: weird")

    def test_unix_sockets(self) -> None:
        """A unix socket's failures name its path and the setting to check, the path (seen on a
        real gateway: a socket that did not exist was "cannot connect to /run/m.sock: An error
        occurred while connecting: 2: No such file or directory.", and one nothing listened on
        said to check the endpoint's host and port)."""
        unix = peer_of("unix:path=/run/m.sock")

        def connect_error(number: int) -> BaseException:
            return error.getConnectError((number, os.strerror(number)))  # as Twisted's unix client makes them

        self.check(connect_error(errno.ENOENT), unix,
                   "no socket at /run/m.sock: nothing listens there (check the endpoint's path)")
        self.check(connect_error(errno.ECONNREFUSED), unix,
                   "connection refused by /run/m.sock: nothing listens there (check the endpoint's path)")
        self.check(connect_error(errno.EACCES), unix,
                   "cannot connect to /run/m.sock: permission denied (may the gateway's user use that socket?)")

    def test_tls(self) -> None:
        """The TLS failures pyOpenSSL and service-identity report, each with the setting to check."""
        self.check(SSL.Error([("SSL routines", "", "certificate verify failed")]), TLS,
                   "TLS certificate verification failed: mqtt.example.com:8883 sent a certificate that the CAs "
                   "in /etc/gateway/ca.pem do not vouch for")
        self.check(SSL.Error([("SSL routines", "", "certificate verify failed")]), peer_of("tls:host=h"),
                   "TLS certificate verification failed: h:8883 sent a certificate that the platform's CAs "
                   "(set ca_file) do not vouch for")
        self.check(VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("mqtt.example.com"))]), TLS,
                   "TLS certificate verification failed: the certificate of mqtt.example.com:8883 is not valid "
                   "for the name mqtt.example.com (set hostname to the name it carries)")
        self.check(SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]), TLS,
                   "mqtt.example.com:8883 requires a TLS client certificate: set cert_file and key_file")
        self.check(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]), TLS,
                   "mqtt.example.com:8883 refused the gateway's TLS client certificate (tlsv1 alert unknown ca)")
        self.check(SSL.Error([("SSL routines", "", "wrong version number")]), TLS,
                   "TLS handshake with mqtt.example.com:8883 failed (wrong version number): is it a TLS port?")
        self.check(error.ConnectionLost(), TLS, "mqtt.example.com:8883 closed the connection before accepting "
                                                "the MQTT session (is it an MQTT over TLS port?)")

    def test_tls_with_the_clock_not_set(self) -> None:
        """A gateway without a real-time clock boots at 1970 and starts its TLS link before NTP
        sets the clock: the server's certificate is not valid yet by it. The cause gives the
        clock's reading, the certificate's window, says the clock is not set and that the link
        connects once it is, not that the CAs do not vouch for the certificate (a user would go
        and change them). The clock's reading is its day, so that the sentence stays the same
        from one attempt to the next (logged once)."""
        refused = CertificateTimeError(572136.0, 1798761600.0, 1830297600.0, "CN=mqtt.example.com", 0)
        self.assertEqual(describe(Failure(refused), TLS),
                         "TLS certificate verification failed: the certificate of mqtt.example.com:8883 "
                         "(CN=mqtt.example.com) is not valid yet by the gateway's clock: it is valid from "
                         "2027-01-01 00:00:00 UTC to 2028-01-01 00:00:00 UTC, and the clock reads 1970-01-07; "
                         "the clock is not set yet (no real-time clock, and NTP has not set it); the link tries "
                         "again on its backoff and connects once the clock and the certificate agree")
        later = CertificateTimeError(572138.0, 1798761600.0, 1830297600.0, "CN=mqtt.example.com", 0)
        self.assertEqual(describe(refused, TLS), describe(later, TLS))

    def test_tls_with_the_clock_ahead_or_behind(self) -> None:
        """A clock that is set but years ahead finds the certificate expired; one behind, not
        valid yet: the cause names both dates and what to do either way. A CA of the chain is
        named as such."""
        expired = CertificateTimeError(2145916800.0, 1735689600.0, 1767225600.0, "CN=mqtt.example.com", 0)
        self.assertEqual(describe(expired, TLS),
                         "TLS certificate verification failed: the certificate of mqtt.example.com:8883 "
                         "(CN=mqtt.example.com) has expired by the gateway's clock: it is valid from "
                         "2025-01-01 00:00:00 UTC to 2026-01-01 00:00:00 UTC, and the clock reads 2038-01-01; if "
                         "the clock is right the server needs a renewed certificate; if it is ahead, set it (NTP); "
                         "the link tries again on its backoff and connects once the clock and the certificate agree")
        early = CertificateTimeError(CLOCK_SET_SINCE, 1798761600.0, 1830297600.0, "CN=Cloud CA", 1)
        self.assertIn("a CA certificate in the chain of mqtt.example.com:8883 (CN=Cloud CA, depth 1) is not "
                      "valid yet by the gateway's clock: it is valid from 2027-01-01 00:00:00 UTC to 2028-01-01 "
                      "00:00:00 UTC, and the clock reads 2024-01-01; if the clock is behind, set it (NTP); if it is "
                      "right, the certificate is for a later time", describe(early, TLS))

    def test_protocol_tls_failure_for_the_clock(self) -> None:
        """The protocol's cause for a TLS handshake refused for the clock is that sentence."""
        causes: list[str] = []

        class Handler:
            def disconnected(self, protocol: Any, cause: str) -> None:
                causes.append(cause)

        protocol = MQTTClientProtocol(Handler(), SessionOptions("gw"), Clock(), TLS)  # type: ignore[arg-type]
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(CertificateTimeError(0.0, 1798761600.0, 1830297600.0, "CN=m", 0)))
        self.assertIn("is not valid yet by the gateway's clock: it is valid from 2027-01-01", causes[0])

    def test_connection_ends(self) -> None:
        """A connection that was up: closed or lost, with the reason."""
        self.check(error.ConnectionDone(), TCP, "connection to 127.0.0.1:1883 closed", accepted=True)
        self.check(error.ConnectionLost(), TCP, "connection to 127.0.0.1:1883 lost", accepted=True)
        self.check(ConnectionResetError("Connection reset by peer"), TCP,
                   "connection to 127.0.0.1:1883 lost: Connection reset by peer", accepted=True)

    def test_protocol_causes(self) -> None:
        """The protocol's own causes name the server and the timeout."""
        causes: list[str] = []

        class Handler:
            def connected(self, protocol: Any, session_present: bool) -> None:
                pass

            def disconnected(self, protocol: Any, cause: str) -> None:
                causes.append(cause)

        clock = Clock()
        protocol = MQTTClientProtocol(Handler(), SessionOptions("gw", connect_timeout=5), clock, TCP)  # type: ignore[arg-type]
        protocol.makeConnection(StringTransport())
        clock.advance(5)
        protocol.connectionLost(Failure(error.ConnectionAborted()))
        protocol = MQTTClientProtocol(Handler(), SessionOptions("gw"), clock, TCP)  # type: ignore[arg-type]
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"\x20\x02\x00\x00")
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(causes, ["no CONNACK from 127.0.0.1:1883 within 5 s: is it an MQTT server?",
                                  "connection to 127.0.0.1:1883 closed"])


class LastErrorTests(SynchronousTestCase):
    """The read side's ``last_error`` (docs/readside.md): why the last connection ended or failed."""

    def test_failed_connect_is_the_last_error(self) -> None:
        """A connection attempt that fails (nothing listens) shows in the snapshot, not only in
        the status topic's cause; before any attempt it is empty."""
        from gateway.links.mqtt import MQTTLink
        from tests.links.memory import MemoryStream

        clock = MemoryReactorClock()
        link = MQTTLink("cloud", LinkSettings(endpoint="tcp:host=127.0.0.1:port=1883", loss_topic=None),
                        MemoryStream(), clock, ("t", "d"), lambda *a: None, lambda *a: None)
        self.assertEqual(link.snapshot().last_error, "")
        link.start()
        self.addCleanup(link.stop)
        _, _, factory, _, _ = clock.tcpClients[0]
        factory.clientConnectionFailed(clock.connectors[0], Failure(error.ConnectionRefusedError()))
        self.assertEqual(link.snapshot().last_error, "connection refused by 127.0.0.1:1883: nothing listens "
                                                     "there (check the endpoint's host and port)")


class LinkStatusTests(TestCase):
    """The status local apps see, from real failed connections."""

    timeout = 60

    @inlineCallbacks
    def cause_of(self, link: LinkSettings, expected: str) -> Any:
        broker = yield start_broker(self, reactor)
        links = LinksService(LinksSettings(links={"cloud": link}), reactor, broker.bus, MemoryJournal(),
                             retry_policy=lambda attempt: 0.2)
        yield links.startService()
        self.addCleanup(links.stopService)
        for _ in range(200):
            if expected in links.status["cloud"]["cause"]:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIn(expected, links.status["cloud"]["cause"])
        return links.status["cloud"]["cause"]

    @inlineCallbacks
    def test_refused(self) -> Any:
        """Nothing listens on the port: "connection refused by 127.0.0.1:<port>"."""
        port = free_port()
        yield self.cause_of(LinkSettings(endpoint=f"tcp:host=127.0.0.1:port={port}", routes=()),
                            f"connection refused by 127.0.0.1:{port}")

    @inlineCallbacks
    def test_tls_untrusted_server(self) -> Any:
        """A real mosquitto whose certificate another CA signed: verification failed, naming ca_file."""
        pki, other = make_pki(Path(self.mktemp())), make_pki(Path(self.mktemp()))
        cloud = Mosquitto(reactor, Path(self.mktemp()), free_port(), pki)
        yield cloud.start()
        self.addCleanup(cloud.stop)
        cause = yield self.cause_of(LinkSettings(
            endpoint=f"tls:host=localhost:port={cloud.port}", ca_file=other["ca"], cert_file=pki["client_cert"],
            key_file=pki["client_key"], routes=(RouteSettings("telemetry/#", "up/{#}"),), downlink=()),
            "TLS certificate verification failed")
        self.assertIn(f"localhost:{cloud.port} sent a certificate that the CAs in {other['ca']}", cause)

    @inlineCallbacks
    def test_tls_handshake_stalled_or_no_connack(self) -> Any:
        """A server that takes the TCP connection and never answers the TLS handshake is told as
        such after connect_timeout (the CONNECT never went); it was "no CONNACK ...: is it an
        MQTT server?". One that completes the handshake and then says nothing is still "no
        CONNACK"."""
        pki = make_pki(Path(self.mktemp()))
        silent = protocol.Factory.forProtocol(protocol.Protocol)
        stalled = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(stalled.stopListening)
        certificate = ssl.PrivateCertificate.loadPEM(
            Path(pki["server_cert"]).read_text() + Path(pki["server_key"]).read_text())
        mute = reactor.listenSSL(0, silent, certificate.options(), interface="127.0.0.1")
        self.addCleanup(mute.stopListening)
        for port, expected in (
                (stalled.getHost().port, "the TLS handshake with localhost:{port} did not complete within 1 s "
                                         "(connect_timeout): is it a TLS port, is the server overloaded?"),
                (mute.getHost().port, "no CONNACK from localhost:{port} within 1 s: is it an MQTT server?")):
            cause = yield self.cause_of(LinkSettings(endpoint=f"tls:host=localhost:port={port}", ca_file=pki["ca"],
                                                     connect_timeout=1, routes=(), downlink=()),
                                        expected.format(port=port))
            self.assertEqual(cause, expected.format(port=port))

    @inlineCallbacks
    def test_tls_without_client_certificate(self) -> Any:
        """The server requires a client certificate the link does not present."""
        pki = make_pki(Path(self.mktemp()))
        cloud = Mosquitto(reactor, Path(self.mktemp()), free_port(), pki)
        yield cloud.start()
        self.addCleanup(cloud.stop)
        yield self.cause_of(LinkSettings(endpoint=f"tls:host=localhost:port={cloud.port}", ca_file=pki["ca"],
                                         routes=(), downlink=()),
                            f"localhost:{cloud.port} requires a TLS client certificate: set cert_file and key_file")
