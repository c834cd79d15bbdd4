"""MQTT over WebSocket for links (:mod:`gateway.links.websocket`) against real sockets on
127.0.0.1; the URL of an AWS link's WebSocket."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.links import sigv4
from gateway.links.aws_settings import AWSSettings
from gateway.links.endpoint import link_endpoint
from gateway.links.settings import LinkSettings
from gateway.links.websocket import WebSocketEndpoint
from tests.logevents import capture_log_events


class Silent(Protocol):
    """A server that takes the connection and never answers (a proxy with no backend)."""

    def dataReceived(self, data: bytes) -> None:
        """Read the opening handshake; answer nothing."""


class HandshakeTimeoutTests(TestCase):
    """The opening handshake is bounded by the link's connect_timeout, not autobahn's 5 s."""

    timeout = 20

    @inlineCallbacks
    def test_a_server_that_never_answers_the_handshake(self) -> None:
        """A server that accepts and stays silent fails the connection attempt after the
        given handshake timeout (here 0.5 s), with a reason that says so, and is counted. The
        endpoint logs nothing of it: the link's throttled "cannot connect" line says it (the
        endpoint's own "WebSocket to URL failed: ..." came at every attempt besides), nor of the
        connection's start."""
        events = capture_log_events(self)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        endpoint = WebSocketEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", number),
                                     lambda: f"ws://127.0.0.1:{number}/mqtt", reactor, handshake_timeout=0.5)
        started = reactor.seconds()
        d = endpoint.connect(Factory.forProtocol(Protocol))
        error = yield self.assertFailure(d, ConnectionError)
        self.assertLess(reactor.seconds() - started, 4.5)  # autobahn's own 5 s would fail this
        self.assertIn("did not complete within 0.5 s", str(error))
        self.assertEqual(endpoint.failures, 1)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn
                          and e.get("log_namespace", "").startswith("gateway.")], [])
        # nor Twisted's "Starting factory <gateway.links.websocket._Factory object at 0x...>",
        # which every connection of an aws websocket link logged
        self.assertEqual([formatEvent(e) for e in events if "gateway.links.websocket" in formatEvent(e)], [])


class AWSWebSocketURLTests(SynchronousTestCase):
    """The URL an ``aws: {websocket: true}`` link opens."""

    def endpoint(self, description: str) -> tuple[WebSocketEndpoint, MemoryReactorClock, Path]:
        """The endpoint of an aws websocket link to ``description`` (region us-east-1), its
        reactor, and its credentials file."""
        credentials = Path(self.mktemp())
        credentials.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n")
        settings = LinkSettings(endpoint=description, aws=AWSSettings(
            websocket=True, credentials_file=str(credentials), region="us-east-1"))
        reactor = MemoryReactorClock()
        endpoint = link_endpoint(reactor, settings)
        assert isinstance(endpoint, WebSocketEndpoint)
        return endpoint, reactor, credentials

    def test_an_ipv6_address_goes_in_brackets(self) -> None:
        """``tls:host=\\:\\:1``: the URL is ``wss://[::1]:8443/mqtt?...``, which autobahn takes;
        it was ``wss://::1:8443/...``, which autobahn refused at connect ('invalid WebSocket URL:
        missing hostname') and the gateway failed to start."""
        endpoint, reactor, _ = self.endpoint("tls:host=\\:\\:1:port=8443")
        self.assertTrue(endpoint.url().startswith("wss://[::1]:8443/mqtt?X-Amz-Algorithm="), endpoint.url())
        self.assertNoResult(endpoint.connect(Factory.forProtocol(Protocol)))
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_a_tls_endpoint_without_a_port_is_signed_for_the_port_it_connects_to(self) -> None:
        """``tls:host=H`` connects to port 8883 (docs/links.md), and the URL (its Host header,
        and what is signed) names 8883 too: it named 443, so the signature was for another
        host than the one the request reached."""
        endpoint, reactor, _ = self.endpoint("tls:host=cloud.example")
        self.assertTrue(endpoint.url().startswith("wss://cloud.example:8883/mqtt?X-Amz-Algorithm="), endpoint.url())
        self.assertNoResult(endpoint.connect(Factory.forProtocol(Protocol)))
        self.assertEqual(reactor.tcpClients[0][1], 8883)

    def test_a_tcp_endpoint_with_its_port_after_host_is_signed_for_that_port(self) -> None:
        """``tcp:host=H:P`` connects to port P, and the URL (``ws://``, what is signed) names P:
        it named 8883, read keywords first, so the signature was for another Host."""
        endpoint, reactor, _ = self.endpoint("tcp:host=127.0.0.1:8080")
        self.assertTrue(endpoint.url().startswith("ws://127.0.0.1:8080/mqtt?X-Amz-Algorithm="), endpoint.url())
        self.assertNoResult(endpoint.connect(Factory.forProtocol(Protocol)))
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 8080))

    def test_an_ipv6_host_header_has_brackets_and_is_signed_so(self) -> None:
        """``tcp:host=\\:\\:1`` (``ws://``): the opening handshake's Host header is ``[::1]:8080``,
        and the URL is signed for that Host. It was ``Host: ::1:8080``, which nginx (a
        WebSocket proxy in front of an emulator) answers with 400 Bad Request."""
        endpoint, reactor, credentials = self.endpoint("tcp:host=\\:\\:1:port=8080")
        connected = endpoint.connect(Factory.forProtocol(Protocol))
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("::1", 8080))
        transport = StringTransport()
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.connectionLost(Failure(ConnectionDone()))  # (cancels its handshake timer)
        self.failureResultOf(connected, ConnectionError)  # (the handshake never completed)
        request = transport.value().decode()
        self.assertIn("\r\nHost: [::1]:8080\r\n", request)
        query = request.split(" ")[1].split("?", 1)[1]
        signed = sigv4.presign(sigv4.read_credentials(str(credentials), "default"), "[::1]:8080", "/mqtt",
                               "us-east-1", "iotdevicegateway", reactor.seconds())
        self.assertEqual(query, signed)
