"""Broker listener endpoints that need more than Twisted's parser: systemd socket activation."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.internet.endpoints import _SystemdParser
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import TestCase

from gateway.broker.endpoints import EndpointError, parse_endpoint
from gateway.broker.settings import ListenerSettings

from tests.broker import packets
from tests.broker.harness import ANONYMOUS, eventually, raw_connect, start_broker


class SocketActivationTests(TestCase):
    """``systemd:domain=INET:index=0`` (docs/configuration.md, Listeners)."""

    timeout = 20

    @inlineCallbacks
    def test_inherited_socket_served_again_by_the_next_broker(self) -> None:
        """A configuration change stops the broker and starts a new one in-process
        (docs/commands.md); the new one serves on the socket systemd handed over, which stays
        open. Twisted's endpoint closed it once adopted, so the new broker failed with EBADF,
        the change was reverted onto the same closed socket and the gateway exited."""
        inherited = socket.socket()
        self.addCleanup(inherited.close)
        inherited.bind(("127.0.0.1", 0))
        inherited.listen(16)
        self.patch(_SystemdParser, "_sddaemon", ListenFDs([inherited.fileno()], ("mqtt",)))
        section = {"listeners": {"default": {"endpoint": "systemd:domain=INET:index=0"}}, "plugins": ANONYMOUS}
        first = yield start_broker(self, reactor, section)
        yield first.stopService()
        yield start_broker(self, reactor, section)
        client = yield raw_connect(reactor, inherited.getsockname()[1])
        client.transport.write(packets.connect("c1"))
        yield eventually(reactor, lambda: len(client.received) >= 4)
        self.assertEqual(client.received[:4], b"\x20\x02\x00\x00")  # CONNACK 0
        client.transport.loseConnection()
        yield client.lost

    def test_no_inherited_socket_says_so(self) -> None:
        """A systemd: listener started without the socket (not from its .socket unit) fails
        with a reason (docs/configuration.md: the gateway logs the reason and exits 1), not
        Twisted's 'list index out of range'."""
        self.patch(_SystemdParser, "_sddaemon", ListenFDs([], ()))
        endpoint = parse_endpoint(ListenerSettings("default", "systemd:domain=INET:index=0"))(MemoryReactor())
        error = self.assertRaises(EndpointError, endpoint.listen, Factory())
        self.assertIn("systemd handed over no such socket", str(error))
