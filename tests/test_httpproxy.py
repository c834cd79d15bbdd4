"""The CONNECT tunnel and the routing of requests through ``gateway.proxy`` (:mod:`gateway.httpproxy`),
in memory: a proxy's answers written into a ``StringTransport``, time on a ``Clock``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from gateway.httpproxy import ProxyError, ProxyRoutingAgent, TunnelEndpoint, _ProxyEndpoint, proxied_agent
from gateway.proxysettings import ProxySettings, proxy_address

PROXY = proxy_address("http://gw%40site:s3cr%3At@proxy.example:3128")


class Received(Protocol):
    """The protocol run on the tunnel: what it was told."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class ProxyConnection:
    """An endpoint "connecting" to the proxy: its protocol on a ``StringTransport``."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.factory: Any = None
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factory = factory
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)

    def answer(self, data: bytes) -> None:
        """The proxy sends ``data``."""
        self.protocol.dataReceived(data)


class TunnelTests(SynchronousTestCase):
    """:class:`TunnelEndpoint`: the CONNECT exchange, then the protocol on the tunnel."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy = ProxyConnection()
        self.endpoint = TunnelEndpoint(self.clock, self.proxy, PROXY, "server.example", 443)
        self.received = Received()
        self.connecting = self.endpoint.connect(Factory.forProtocol(lambda: self.received))

    def refusal(self) -> str:
        failure = self.failureResultOf(self.connecting, ProxyError)
        self.assertTrue(self.proxy.transport.disconnecting or self.proxy.transport.disconnected)
        return str(failure.value)

    def test_request(self) -> None:
        """The gateway asks for ``host:port`` with its credentials (basic, percent-decoded) and
        waits for the answer."""
        self.assertEqual(self.proxy.transport.value(),
                         b"CONNECT server.example:443 HTTP/1.1\r\nHost: server.example:443\r\n"
                         b"Proxy-Authorization: Basic Z3dAc2l0ZTpzM2NyOnQ=\r\n\r\n")
        self.assertNoResult(self.connecting)

    def test_established(self) -> None:
        """A 200 answer (in pieces) opens the tunnel: the protocol runs on the proxy's
        connection and gets every byte after the answer's head; the end of the connection too."""
        self.proxy.answer(b"HTTP/1.1 200 Connection est")
        self.assertNoResult(self.connecting)
        self.proxy.answer(b"ablished\r\nProxy-Agent: tinyproxy/1.11.1\r\n\r\n\x16\x03")
        self.assertIs(self.successResultOf(self.connecting), self.received)
        self.assertIs(self.received.transport, self.proxy.transport)
        self.proxy.answer(b"\x01")
        self.assertEqual(self.received.data, b"\x16\x03\x01")
        self.proxy.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.received.lost)
        self.clock.advance(60)  # no timer left behind
        self.assertFalse(self.proxy.transport.disconnecting)

    def test_quiet_factory(self) -> None:
        """Connecting to the proxy logs nothing of its own: Twisted's ``Starting factory
        <gateway.httpproxy._TunnelFactory object at 0x...>`` and ``Stopping factory`` lines
        came twice for every request a proxied gateway sent (the request's own errors say what
        failed)."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = self.proxy.factory
        factory.doStart()
        factory.doStop()
        self.assertEqual(events, [])

    def test_authentication_required(self) -> None:
        """A 407 fails the connection with one line naming the proxy (never its password),
        the target and the proxy's answer (its page's title), with what to check."""
        page = b"<html><head><title>407 Proxy Authentication Required</title></head><body>...</body></html>"
        self.proxy.answer(b"HTTP/1.0 407 Proxy Authentication Required\r\nContent-Type: text/html\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(page))
        self.assertNoResult(self.connecting)  # (its body is on the way)
        self.proxy.answer(page)
        message = self.refusal()
        self.assertEqual(message, "the proxy http://proxy.example:3128 refused the tunnel to server.example:443:"
                                  " HTTP 407: Proxy Authentication Required (the proxy wants a user and password:"
                                  " check them in gateway.proxy.url)")
        self.assertNotIn("s3cr", message)

    def test_forbidden_without_body(self) -> None:
        """A refusal without a body is told with its reason phrase, at once."""
        self.proxy.answer(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.assertIn("refused the tunnel to server.example:443: HTTP 403: Forbidden (the proxy's rules",
                      self.refusal())

    def test_refusal_body_cut_by_close(self) -> None:
        """A refusal whose body ends early (the proxy closes) is told with what came."""
        self.proxy.answer(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 100\r\n\r\nno route to server")
        self.assertNoResult(self.connecting)
        self.proxy.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIn("HTTP 502: no route to server", self.refusal())

    def test_garbage(self) -> None:
        """An answer that is not HTTP fails at once, quoting its start on one line."""
        self.proxy.answer(b"SSH-2.0-OpenSSH_9.2\r\n")
        self.assertEqual(self.refusal(), "the proxy http://proxy.example:3128 answered the CONNECT with something"
                                         " that is not HTTP: 'SSH-2.0-OpenSSH_9.2'")

    def test_bad_status_line(self) -> None:
        """A head whose status line is not ``HTTP/1.x NNN`` fails."""
        self.proxy.answer(b"HTTP/1.1 OK\r\n\r\n")
        self.assertIn("answered the CONNECT with a status line that is not HTTP: 'HTTP/1.1 OK'", self.refusal())

    def test_endless_head(self) -> None:
        """A head that never ends is not read for ever."""
        self.proxy.answer(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3000)
        self.assertIn("answered the CONNECT with a head over 16384 bytes", self.refusal())

    def test_closed_early(self) -> None:
        """A proxy that closes before it answers fails the connection."""
        self.proxy.answer(b"HTTP/1.1 200")
        self.proxy.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(str(self.failureResultOf(self.connecting, ProxyError).value),
                         "the proxy http://proxy.example:3128 closed the connection before it answered the"
                         " CONNECT to server.example:443")

    def test_no_answer(self) -> None:
        """A proxy that does not answer within 30 s fails the connection, which is dropped."""
        self.clock.advance(29.9)
        self.assertNoResult(self.connecting)
        self.clock.advance(0.1)
        self.assertIn("did not answer the CONNECT to server.example:443 within 30 s", self.refusal())

    def test_cancel(self) -> None:
        """A request's timeout cancels the attempt: the connection is dropped, no timer left."""
        self.connecting.cancel()
        self.failureResultOf(self.connecting, CancelledError)
        self.assertTrue(self.proxy.transport.disconnecting or self.proxy.transport.disconnected)
        self.proxy.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ipv6_target(self) -> None:
        """An IPv6 server is asked for in brackets; no credentials, no Proxy-Authorization."""
        proxy = ProxyConnection()
        TunnelEndpoint(self.clock, proxy, proxy_address("http://[::1]:8888"), "2001:db8::1", 8443).connect(
            Factory.forProtocol(Received))
        self.assertEqual(proxy.transport.value(),
                         b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n")


class UnreachableTests(SynchronousTestCase):
    """A proxy that cannot be reached is named in the error."""

    def test_refused(self) -> None:
        class Refusing:
            def connect(self, factory: Any) -> Deferred[Any]:
                return fail(ConnectionRefusedError("Connection refused"))

        failure = self.failureResultOf(_ProxyEndpoint(Refusing(), PROXY.shown).connect(Factory()), ProxyError)
        self.assertEqual(str(failure.value), "the proxy http://proxy.example:3128 cannot be reached: the server"
                                             " refused the connection (is it running, is the port right?)")


class Agent:
    """An agent that records its requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes, Headers | None]] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None) -> Any:
        self.requests.append((method, uri, headers))
        return Deferred()


class _AnsweringAgent:
    """An agent whose answers a test gives by hand (``answers``, one Deferred per request)."""

    def __init__(self) -> None:
        self.answers: list[Deferred[Any]] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None) -> Any:
        self.answers.append(Deferred())
        return self.answers[-1]


class _Response:
    """An answer's status and phrase; notes whether its body was taken (and dropped)."""

    def __init__(self, code: int, phrase: bytes) -> None:
        self.code = code
        self.phrase = phrase
        self.body_dropped = False

    def deliverBody(self, protocol: Any) -> None:
        self.body_dropped = True


class RoutingTests(SynchronousTestCase):
    """:class:`ProxyRoutingAgent`: https:// in a tunnel, http:// forwarded, ``no_proxy`` direct."""

    def setUp(self) -> None:
        self.direct, self.tunnel, self.forward = Agent(), Agent(), Agent()
        self.agent = ProxyRoutingAgent(("local", ".lan", "10.0.0.0/8"), b"Basic eA==", self.direct, self.tunnel,
                                       self.forward)

    def test_routes(self) -> None:
        headers = Headers({b"accept": [b"*/*"]})
        for uri in (b"https://api.example.com/x", b"http://files.example.com/a.bin", b"https://local:8443/",
                    b"http://box.lan/", b"http://10.1.2.3/", b"https://app.local/"):
            self.agent.request(b"GET", uri, headers)
        self.assertEqual([r[1] for r in self.tunnel.requests], [b"https://api.example.com/x"])
        self.assertEqual([r[1] for r in self.forward.requests], [b"http://files.example.com/a.bin"])
        self.assertEqual([r[1] for r in self.direct.requests],
                         [b"https://local:8443/", b"http://box.lan/", b"http://10.1.2.3/", b"https://app.local/"])
        forwarded = self.forward.requests[0][2]
        assert forwarded is not None
        self.assertEqual(forwarded.getRawHeaders(b"proxy-authorization"), [b"Basic eA=="])
        self.assertEqual(forwarded.getRawHeaders(b"accept"), [b"*/*"])
        # the credentials go to the proxy only: not to a server, not into the caller's headers
        self.assertIsNone(headers.getRawHeaders(b"proxy-authorization"))
        for _, _, sent in self.tunnel.requests + self.direct.requests:
            assert sent is not None
            self.assertIsNone(sent.getRawHeaders(b"proxy-authorization"))

    def test_a_forwarded_407_is_the_proxys_refusal(self) -> None:
        """A 407 to a forwarded http:// request is the proxy asking for its credentials: a
        ProxyError naming the proxy, not an answer of the server (fleet feedback took such a
        4xx for the server's refusal for good). Other answers pass as they are."""
        forward = _AnsweringAgent()
        agent = ProxyRoutingAgent((), None, Agent(), Agent(), forward, "http://proxy:3128")
        d = agent.request(b"GET", b"http://files.example.com/a.bin")
        response = _Response(407, b"Proxy Authentication Required")
        forward.answers[0].callback(response)
        failure = self.failureResultOf(d, ProxyError)
        self.assertEqual(str(failure.value), "the proxy http://proxy:3128 refused to forward the request to"
                         " files.example.com: HTTP 407: Proxy Authentication Required (the proxy wants a user and"
                         " password: check them in gateway.proxy.url)")
        self.assertTrue(response.body_dropped)
        d = agent.request(b"GET", b"http://files.example.com/a.bin")
        ok = _Response(404, b"Not Found")
        forward.answers[1].callback(ok)
        self.assertIs(self.successResultOf(d), ok)

    def test_no_proxy_set(self) -> None:
        """Without a proxy the client's agent is its plain one, with no layer added."""
        direct = Agent()
        self.assertIs(proxied_agent(MemoryReactorClock(), ProxySettings(), direct, object(), object()), direct)
        self.assertIs(proxied_agent(MemoryReactorClock(), ProxySettings(url=""), direct, object(), object()), direct)
        self.assertIsInstance(proxied_agent(MemoryReactorClock(), ProxySettings(url="http://p:1"), direct, object(),
                                            object()), ProxyRoutingAgent)


class WiringTests(SynchronousTestCase):
    """Every HTTP client the service tree builds goes through ``gateway.proxy``: the fleet's,
    the downloads', the uploads' and each HTTP link's; a ``no_proxy`` host does not."""

    def test_clients_of_the_tree(self) -> None:
        from pathlib import Path

        from gateway import config
        from gateway.links.http_settings import HTTPLinkSettings
        from gateway.tree import build_service
        from tests.ports import free_port

        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        (work / "gateway.yaml").write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            "  proxy: {url: 'http://10.9.9.9:3128', no_proxy: [direct.example]}\n"
            f"broker: {{listeners: {{default: {{endpoint: 'tcp:{free_port()}:interface=127.0.0.1'}}}}}}\n"
            f"ingest: {{endpoint: 'tcp:{free_port()}:interface=127.0.0.1'}}\n"
            "telemetry: {metrics_endpoint: ''}\n"
            "fleet: {enabled: true, base_url: 'https://hawkbit.example', auth: none}\n")
        reactor = MemoryReactorClock()
        parts = build_service(config.load(work / "gateway.yaml"), reactor).parts
        assert parts is not None and parts.fleet is not None
        clients = {"fleet": parts.fleet.ddi.http, "updates": parts.updates.http, "uploads": parts.uploads.http,
                   "links": parts.links.http_client(HTTPLinkSettings(url="https://murano.example"))}
        for name, http in clients.items():
            # (MemoryReactor resolves every name to 127.0.0.1: the port tells where it connects)
            for url, port in [("https://cloud.example/a", 3128), ("http://cloud.example/b", 3128),
                              ("https://direct.example/c", 443)]:
                with self.subTest(client=name, url=url):
                    http.get(url)
                    self.assertEqual(reactor.tcpClients[-1][1], port)
