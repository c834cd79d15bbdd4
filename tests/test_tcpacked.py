"""The bytes a peer's TCP acknowledged, read from the kernel under a transport's layers."""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from gateway.tcpacked import acked_counter, bytes_acked, tcp_socket


class _Reader(protocol.Protocol):
    """Counts what it reads; fires ``got`` once ``wanted`` bytes came."""

    def __init__(self, wanted: int) -> None:
        self.wanted, self.count = wanted, 0
        self.got: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        if self.count >= self.wanted and not self.got.called:
            self.got.callback(None)


class _Layer:
    """A wrapper's shape (a TLS connection, the WebSocket adapter): its own ``transport``."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport


class TCPAckedTests(TestCase):
    """On Linux the kernel says how many sent bytes the peer acknowledged."""

    if not sys.platform.startswith("linux"):
        skip = "TCP_INFO's tcpi_bytes_acked is Linux's"

    @inlineCallbacks
    def test_bytes_the_peer_read_are_acknowledged_under_wrappers(self) -> None:
        """The socket is found under two wrapper layers, and counts what the peer got."""
        reader = _Reader(5000)
        factory = protocol.Factory.forProtocol(lambda: reader)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                                       protocol.Protocol())
        self.addCleanup(client.transport.loseConnection)
        wrapped = _Layer(_Layer(client.transport))
        sock = tcp_socket(wrapped)
        self.assertIsInstance(sock, socket.socket)
        counter = acked_counter(wrapped)
        self.assertEqual(counter(), 0)
        client.transport.write(b"x" * 5000)
        yield reader.got
        for _ in range(100):  # the ACK may come a moment after the data (a delayed ACK: 40 ms)
            if counter() == 5000:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(bytes_acked(sock), 5000)

    def test_no_socket_says_nothing(self) -> None:
        """A test's transport, or nothing under a wrapper: no socket, no count."""
        self.assertIsNone(tcp_socket(StringTransport()))
        self.assertIsNone(tcp_socket(_Layer(None)))
        self.assertIsNone(acked_counter(StringTransport())())
