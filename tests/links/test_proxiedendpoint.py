"""MQTT links behind ``gateway.proxy``: a ``tcp:``, ``tls:`` or ``ssl:`` link (and AWS's WebSocket
on one) connects through the proxy's CONNECT tunnel, its own TLS inside; a host in ``no_proxy``,
a gateway without a proxy and a ``unix:`` link connect directly; a refused tunnel is the link's
usual "cannot connect" line and status, retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.links.aws_settings import AWSSettings
from gateway.links.endpoint import link_endpoint
from gateway.links.service import LinksService
from gateway.links.settings import LinkSettings, LinksSettings
from gateway.proxysettings import ProxySettings
from tests.links.memory import MemoryJournal
from tests.links.test_service import RecordingBus
from tests.logevents import capture_log_events
from tests.tlscerts import make_pki

PROXY = ProxySettings(url="http://gw:s3cr3t@127.0.0.1:3128", no_proxy=("localhost", ".corp.example", "10.0.0.0/8"))
#: The proxy's answer opening a tunnel.
OPENED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def proxy_connection(test: SynchronousTestCase, reactor: MemoryReactorClock) -> StringTransport:
    """The one connection attempt on ``reactor``, to the proxy, taken: the transport its CONNECT
    went out on (its ``protocol``: the gateway's side of it)."""
    [(host, port, factory, *_)] = reactor.tcpClients
    test.assertEqual((host, port), ("127.0.0.1", 3128))
    transport = StringTransport()
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    transport.protocol = protocol  # type: ignore[attr-defined]
    return transport


class _Received(Protocol):
    """Keeps what comes in on the connection."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ProxiedEndpointTests(SynchronousTestCase):
    """Where a link's endpoint connects, and what it says first, with and without a proxy."""

    def connect(self, settings: LinkSettings, proxy: ProxySettings = PROXY) -> tuple[
            MemoryReactorClock, Any]:
        """Connect ``settings``'s endpoint under ``proxy`` on a memory reactor: the reactor and
        the connection attempt's Deferred."""
        reactor = MemoryReactorClock()
        d = link_endpoint(reactor, settings, proxy).connect(Factory.forProtocol(_Received))
        return reactor, d

    def tunnel(self, reactor: MemoryReactorClock) -> StringTransport:
        """The connection to the proxy, taken: the transport its CONNECT went out on."""
        return proxy_connection(self, reactor)

    def connect_line(self, target: str) -> bytes:
        """The CONNECT request the gateway sends the proxy for ``target``."""
        return (f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic Z3c6czNjcjN0\r\n\r\n"
                .encode())

    def test_tls_link_runs_its_own_tls_in_the_tunnel(self) -> None:
        """A ``tls:`` link asks the proxy for a tunnel to the broker, then starts TLS in it
        with the broker's name (SNI); nothing before the proxy's answer."""
        reactor, d = self.connect(LinkSettings(endpoint="tls:host=mqtt.example.com:port=8883"))
        transport = self.tunnel(reactor)
        self.assertEqual(transport.value(), self.connect_line("mqtt.example.com:8883"))
        self.assertNoResult(d)
        transport.clear()
        transport.protocol.dataReceived(OPENED)
        hello = transport.value()
        self.assertEqual(hello[:1], b"\x16")  # a TLS handshake record: the ClientHello
        self.assertIn(b"mqtt.example.com", hello)  # its server name
        self.assertIsInstance(self.successResultOf(d), _Received)  # (on TLS, as on a direct connection)

    def test_tcp_link_connects_in_the_tunnel(self) -> None:
        """A ``tcp:`` link's protocol runs on the tunnel once the proxy opened it, and gets
        the broker's first bytes even when they came with the proxy's answer."""
        reactor, d = self.connect(LinkSettings(endpoint="tcp:host=mqtt.example.com:port=1883"))
        transport = self.tunnel(reactor)
        self.assertEqual(transport.value(), self.connect_line("mqtt.example.com:1883"))
        self.assertNoResult(d)
        transport.protocol.dataReceived(OPENED + b"\x20\x02\x00\x00")
        self.assertEqual(self.successResultOf(d).received, b"\x20\x02\x00\x00")

    def test_tcp_link_to_an_ipv6_address_and_its_timeout(self) -> None:
        """The CONNECT names an IPv6 address in brackets; ``timeout=`` and ``bindAddress=`` are
        those of the connection to the proxy."""
        reactor, _ = self.connect(LinkSettings(endpoint="tcp:host=fd00\\:\\:5:port=1883:timeout=7:"
                                                        "bindAddress=127.0.0.2"))
        [(_, _, _, timeout, bind)] = reactor.tcpClients
        self.assertEqual((timeout, bind), (7, ("127.0.0.2", 0)))
        self.assertEqual(self.tunnel(reactor).value(), self.connect_line("[fd00::5]:1883"))

    def test_ssl_link_connects_in_the_tunnel(self) -> None:
        """An ``ssl:`` link too (Twisted's form; TLS with ``tls:``'s name check on top)."""
        reactor, _ = self.connect(LinkSettings(endpoint="ssl:host=mqtt.example.com:port=8883:"
                                                        "hostname=mqtt.example.com"))
        transport = self.tunnel(reactor)
        self.assertEqual(transport.value(), self.connect_line("mqtt.example.com:8883"))
        transport.clear()
        transport.protocol.dataReceived(OPENED)
        self.assertEqual(transport.value()[:1], b"\x16")

    def test_aws_websocket_link_connects_in_the_tunnel(self) -> None:
        """An AWS IoT link over a WebSocket: the tunnel to its endpoint (TLS and the WebSocket
        then run in it as they would on TCP; not started here: autobahn would time its opening
        handshake on the global reactor)."""
        credentials = Path(self.mktemp())
        credentials.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n")
        aws = AWSSettings(websocket=True, credentials_file=str(credentials), region="us-east-1")
        reactor, _ = self.connect(LinkSettings(endpoint="tls:host=a1.iot.us-east-1.amazonaws.com:port=443", aws=aws))
        transport = self.tunnel(reactor)
        self.assertEqual(transport.value(), self.connect_line("a1.iot.us-east-1.amazonaws.com:443"))

    def test_hosts_in_no_proxy_connect_directly(self) -> None:
        """A link whose host ``no_proxy`` names (a name, a domain, a network) connects to it itself."""
        pki = make_pki(Path(self.mktemp()))
        for endpoint, address in [("tls:host=localhost:port=8883", None),
                                  ("tcp:host=broker.corp.example:port=1883", None),
                                  ("tcp:host=10.1.2.3:port=1883", ("10.1.2.3", 1883)),
                                  (f"ssl:host=10.0.0.1:port=8883:hostname=localhost:caCertsDir={Path(pki['ca']).parent}",
                                   ("10.0.0.1", 8883))]:
            reactor, _ = self.connect(LinkSettings(endpoint=endpoint))
            self.assertNotIn(("127.0.0.1", 3128), [(h, p) for h, p, *_ in reactor.tcpClients], endpoint)
            if address is not None:
                self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [address], endpoint)

    def test_without_a_proxy_links_connect_directly(self) -> None:
        """No ``gateway.proxy.url``: the link connects to its broker, as it always did."""
        reactor, _ = self.connect(LinkSettings(endpoint="tcp:host=10.1.2.3:port=1883"), ProxySettings())
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("10.1.2.3", 1883)])

    def test_unix_link_connects_directly(self) -> None:
        """A ``unix:`` link (a broker on the gateway itself) never goes through the proxy."""
        reactor, _ = self.connect(LinkSettings(endpoint="unix:path=/run/cloud.sock"))
        self.assertEqual((reactor.tcpClients, [c[0] for c in reactor.unixClients]), ([], ["/run/cloud.sock"]))


class ProxiedLinkStatusTests(SynchronousTestCase):
    """A proxy that refuses the tunnel (squid's default rules refuse CONNECT to 8883)."""

    def test_a_refused_tunnel_is_the_links_cannot_connect_line_status_and_retry(self) -> None:
        """The link logs its usual "cannot connect" line, naming the proxy, the broker and the
        proxy's answer, shows it as its cause, and tries again after its backoff."""
        reactor = MemoryReactorClock()
        settings = LinkSettings(endpoint="tls:host=mqtt.example.com:port=8883", loss_topic=None,
                                backoff_initial=1.0, backoff_max=1.0, min_connect_interval=0.0)
        links = LinksService(LinksSettings(links={"cloud": settings}), reactor, RecordingBus(), MemoryJournal(),
                             identity=("default", "gw1"), proxy=PROXY)
        events = capture_log_events(self)
        links.startService()
        self.addCleanup(links.stopService)
        factory = reactor.tcpClients[0][2]
        factory.doStart()  # (as a real reactor's connector does around each connection)
        transport = proxy_connection(self, reactor)
        transport.protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        cause = ("the proxy http://127.0.0.1:3128 refused the tunnel to mqtt.example.com:8883: HTTP 403: Forbidden"
                 " (the proxy's rules forbid it: its ACL, or the ports it tunnels to)")
        self.assertEqual([str(formatEvent(e)) for e in events if e["log_level"] >= LogLevel.warn],
                         [f"link cloud cannot connect: {cause}"])
        factory.doStop()
        # (the tunnel's factory logged "Starting factory"/"Stopping factory" at every attempt)
        self.assertEqual([e for e in events if "factory" in str(formatEvent(e))], [])
        link = links.links["cloud"]
        self.assertEqual((link.is_connected, link.cause, link.last_error), (False, cause, cause))
        self.assertEqual(links.status["cloud"]["cause"], cause)
        reactor.advance(1.0)
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("127.0.0.1", 3128)] * 2)
