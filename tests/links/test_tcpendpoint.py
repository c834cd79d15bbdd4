"""A link's ``tcp:`` endpoint tries every address its host name resolves to, IPv6 and IPv4
(as ``tls:`` does): Twisted's own ``tcp:`` client asked for the name's IPv4 addresses only."""

from __future__ import annotations

from typing import Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IAddress, IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.links.endpoint import link_endpoint
from gateway.links.settings import LinkSettings


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to cancel: resolved at once."""


@implementer(IHostnameResolver)
class _Hosts:
    """Resolves every name to ``hosts`` (an /etc/hosts with ``::1`` and ``127.0.0.1`` for it)."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts
        self.asked: list[str] = []

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Sequence[type[IAddress]] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for host in self.hosts:
            kind = IPv6Address if ":" in host else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", host, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class TCPEndpointAddressesTests(SynchronousTestCase):
    """Which addresses a ``tcp:`` link connects to."""

    def connect(self, endpoint: str, *hosts: str) -> tuple[MemoryReactorClock, _Hosts]:
        reactor = MemoryReactorClock()
        resolver = _Hosts(*hosts)
        reactor.installNameResolver(resolver)
        d = link_endpoint(reactor, LinkSettings(endpoint=endpoint)).connect(Factory.forProtocol(Protocol))
        self.assertNoResult(d)
        return reactor, resolver

    def test_a_name_with_ipv6_and_ipv4_addresses_tries_both(self) -> None:
        """A name of ``::1`` and ``127.0.0.1``: the first address refuses, the link tries the other."""
        reactor, resolver = self.connect("tcp:host=cloud.example:port=1883", "::1", "127.0.0.1")
        self.assertEqual(resolver.asked, ["cloud.example"])
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients], [("::1", 1883)])
        reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        reactor.advance(1)
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients],
                         [("::1", 1883), ("127.0.0.1", 1883)])

    def test_a_name_with_ipv6_addresses_only(self) -> None:
        """A name with no IPv4 address is reached on its IPv6 one (it was a 'DNS lookup failed')."""
        reactor, _ = self.connect("tcp:cloud.example:8883", "fd00::5")
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients], [("fd00::5", 8883)])

    def test_twisted_forms_of_the_string(self) -> None:
        """``tcp:host=H:P`` and ``timeout=``/``bindAddress=`` are read as Twisted reads them."""
        reactor, resolver = self.connect("tcp:host=cloud.example:1884:timeout=7:bindAddress=127.0.0.2",
                                         "127.0.0.1")
        self.assertEqual(resolver.asked, ["cloud.example"])
        [(host, port, _, timeout, bind)] = reactor.tcpClients
        self.assertEqual((host, port, timeout, bind), ("127.0.0.1", 1884, 7, ("127.0.0.2", 0)))
