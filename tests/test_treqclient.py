"""The gateway's HTTP clients take URLs with an IPv6 address as their host
(``http://[::1]:8080/``): treq put the host through IDNA, which refused its colons."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from zope.interface import implementer

from gateway.links.http_settings import HTTPLinkSettings
from gateway.links.httpclient import make_link_client
from gateway.operations.httpclient import make_http_client
from gateway.treqclient import GatewayHTTPClient


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
