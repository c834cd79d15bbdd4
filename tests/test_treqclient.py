"""The gateway's HTTP clients take URLs with an IPv6 address as their host
(``http://[::1]:8080/``): treq put the host through IDNA, which refused its colons."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from gateway.links.http_settings import HTTPLinkSettings
from gateway.links.httpclient import make_link_client
from gateway.operations.httpclient import make_http_client
from gateway.treqclient import GatewayHTTPClient


def _ipv6_loopback() -> str | None:
    """Why ``::1`` cannot be listened on here (``None`` when it can)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback here (binding ::1: {exc.strerror or exc})"
    return None


@implementer(IAgent)
class RecordingAgent:
    """Keeps the URI of every request; none is answered."""

    def __init__(self) -> None:
        self.uris: list[bytes] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Deferred[Any]:
        self.uris.append(uri)
        return Deferred()


class AddressURLTests(SynchronousTestCase):
    """What the client hands its agent."""

    def sent(self, url: Any) -> bytes:
        agent = RecordingAgent()
        self.assertNoResult(GatewayHTTPClient(agent).get(url))
        [uri] = agent.uris
        return uri

    def test_an_ipv6_address_is_sent_in_brackets(self) -> None:
        """An IPv6 host goes to the agent in brackets, its path and query encoded as for any host."""
        self.assertEqual(self.sent("http://[::1]:8080/a b?x=é"), b"http://[::1]:8080/a%20b?x=%C3%A9")
        self.assertEqual(self.sent(b"https://[fd00::2]/onep:v1/stack/alias"), b"https://[fd00::2]/onep:v1/stack/alias")

    def test_names_and_ipv4_addresses_are_as_before(self) -> None:
        """A host name is still put through IDNA; an IPv4 address is left alone."""
        self.assertEqual(self.sent("https://bücher.example/x"), b"https://xn--bcher-kva.example/x")
        self.assertEqual(self.sent("http://127.0.0.1:8090/"), b"http://127.0.0.1:8090/")


class BuiltClientTests(SynchronousTestCase):
    """The clients the services build (operations: fleet, downloads, uploads; HTTP links)
    connect for an IPv6 URL instead of raising idna's ``InvalidCodepoint``."""

    def test_operations_client(self) -> None:
        """The fleet's, downloads' and uploads' client."""
        reactor = MemoryReactorClock()
        self.assertNoResult(make_http_client(reactor, None, 1).get("http://[::1]:8080/DEFAULT/controller/v1/gw"))
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_http_link_client(self) -> None:
        """An HTTP link's client (Exosite, JSON)."""
        reactor = MemoryReactorClock()
        client = make_link_client(reactor, HTTPLinkSettings(url="http://[::1]:8080"))
        self.assertNoResult(client.post("http://[::1]:8080/provision/activate", data=b"x"))
        self.assertEqual(len(reactor.tcpClients), 1)


class _Host(Resource):
    """Answers every GET with the request's Host header."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return request.getHeader("host").encode()


class IPv6LoopbackTests(TestCase):
    """A real request to a server on ``::1``, through the client the fleet, downloads and
    uploads use."""

    skip = _ipv6_loopback()
    timeout = 10

    @inlineCallbacks
    def test_a_request_to_ipv6_loopback(self) -> Any:
        """``http://[::1]:PORT/`` is answered; its Host header is ``[::1]:PORT``."""
        port = reactor.listenTCP(0, Site(_Host()), interface="::1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        http = make_http_client(reactor, None, 1)
        self.addCleanup(http.connection_pool.closeCachedConnections)
        response = yield http.get(f"http://[::1]:{number}/x")
        self.assertEqual((response.code, (yield response.content())), (200, f"[::1]:{number}".encode()))
