"""The broker sends on a plain socket itself while Twisted holds none of the connection's
bytes (``gateway.directsend``, used by ``MQTTConnection.flush``), over real sockets: what the kernel does not take goes
through Twisted, in order; the connection sends nothing itself until Twisted has sent it
all; and a connection closed meanwhile still closes, in order, once its client reads."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.connection import MQTTConnection, MQTTListenerFactory
from gateway.directsend import plain_socket
from tests.broker import packets
from tests.broker.harness import ANONYMOUS, eventually, start_broker
from tests.broker.test_connection import RecordingAcceptor
from tests.broker.test_delivery import DeliveryTestCase
from tests.broker.test_durable_ack import make_broker
from tests.steppingclock import SteppingClock

SECTION = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
           "max_queued_messages": 100000, "max_queued_bytes": 1 << 30, "max_inflight_messages": 20}
COUNT, PAYLOAD = 3000, b"x" * 2000  # 6 MB: more than the kernel holds for a reader of 4 KiB


def connections(service: Any) -> list[MQTTConnection]:
    """Every client connection of the broker."""
    return [connection for factory in service.factories.values() for connection in factory.connections]


class DirectSendTests(DeliveryTestCase):
    timeout = 60

    @inlineCallbacks
    def lagging(self, service: Any) -> Any:
        """A QoS 0 subscriber that stops reading (the broker's send buffer to it 4 KiB) while
        a publisher sends COUNT messages at QoS 1, all acknowledged; returns it, and its
        connection in the broker, once the broker's send to it went through Twisted (its
        socket full) and every message was published."""
        sub = yield self.subscribed(service, "lagging", ("d/#", 0))
        [connection] = connections(service)
        self.assertIsNotNone(plain_socket(connection.transport))  # (the path under test)
        connection.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sub.transport.pauseProducing()
        publisher = yield self.client(service, "publisher")
        publisher.transport.write(b"".join(packets.publish("d/t", b"%d " % i + PAYLOAD, qos=1, packet_id=i + 1)
                                           for i in range(COUNT)))
        yield publisher.until(lambda: len(publisher.others) >= COUNT + 1, reactor, timeout=30)  # every PUBACK
        self.assertTrue(connection.sending_paused)
        return sub, connection

    @inlineCallbacks
    def test_a_subscriber_whose_socket_filled_gets_everything_in_order(self) -> None:
        """Nothing is lost, reordered or sent twice when the kernel took only part of a send:
        the rest went through Twisted, and what came later waited for it."""
        service = yield start_broker(self, reactor, SECTION)
        sub, connection = yield self.lagging(service)
        sub.transport.resumeProducing()
        yield sub.until(lambda: len(sub.publishes) >= COUNT, reactor, timeout=30)
        self.assertEqual([p[1] for p in sub.publishes], [b"%d " % i + PAYLOAD for i in range(COUNT)])
        self.assertEqual(service.broker.messages_dropped, 0)
        yield eventually(reactor, lambda: not connection.sending_paused)

    @inlineCallbacks
    def test_a_connection_closed_while_twisted_holds_its_bytes_closes_once_they_are_read(self) -> None:
        """A DISCONNECT from a client whose socket is full closes the connection in order once
        the client reads: what was handed over arrives, then the end of the stream. (Twisted
        does not close a connection whose pull producer is still registered.)"""
        service = yield start_broker(self, reactor, dict(SECTION, connect_timeout=120))
        sub, connection = yield self.lagging(service)
        sub.transport.write(packets.packet(0xE0, b""))  # DISCONNECT
        yield eventually(reactor, lambda: connection not in connection.factory.serving)  # closing
        self.assertTrue(connection.sending_paused)  # (its bytes still held)
        sub.transport.resumeProducing()
        yield sub.lost.addTimeout(30, reactor)
        self.assertIsInstance(sub.reason.value, ConnectionDone)
        got = [p[1] for p in sub.publishes]
        self.assertGreater(len(got), 0)
        self.assertEqual(got, [b"%d " % i + PAYLOAD for i in range(len(got))])


class Descriptors:
    """The reactor as a transport sees it: which descriptors want to read or write."""

    def __init__(self) -> None:
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


class DirectSendOrderTests(SynchronousTestCase):
    """A connection on a real socket pair, the test running Twisted's writes by hand."""

    def setUp(self) -> None:
        self.reactor = Descriptors()
        self.acceptor = RecordingAcceptor()
        self.factory = MQTTListenerFactory("default", self.acceptor, SteppingClock(), 1 << 20, 5.0)
        self.connection, self.transport, self.peer = self.open(self.factory)
        self.ours = self.transport.getHandle()

    def open(self, factory: MQTTListenerFactory) -> tuple[MQTTConnection, tcp.Connection, socket.socket]:
        """A connection of ``factory``'s listener on one end of a socket pair (its send buffer
        4 KiB), and the client's end (not blocking)."""
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer.setblocking(False)
        transport = tcp.Connection(ours, None, self.reactor)  # type: ignore[arg-type]
        transport.connected = True
        transport.getPeer = lambda: IPv4Address("TCP", "127.0.0.1", 54321)  # type: ignore[method-assign]
        connection = factory.buildProtocol(None)
        assert connection is not None
        transport.protocol = connection
        connection.makeConnection(transport)
        self.addCleanup(factory.flush)
        return connection, transport, peer

    def send(self, data: bytes) -> None:
        self.connection.write(data)
        self.connection.flush()

    def drain(self, peer: socket.socket | None = None) -> bytes:
        """Everything the client (``peer``, else the test's first) can read now."""
        got = b""
        while True:
            try:
                chunk = (peer or self.peer).recv(1 << 20)
            except BlockingIOError:
                return got
            got += chunk

    def test_bytes_written_while_twisted_holds_some_wait_behind_them(self) -> None:
        """While Twisted holds bytes of the connection, later ones go behind them, even when
        the kernel has room again before Twisted's turn to write: nothing overtakes."""
        self.assertIs(plain_socket(self.transport), self.ours)
        self.send(b"a" * 1_000_000)  # more than the kernel takes: the rest is Twisted's
        self.assertTrue(self.connection.sending_paused)
        self.assertIn(self.transport, self.reactor.writers)
        got = self.drain()  # the kernel has room again; Twisted has not written yet
        self.send(b"b" * 10)
        while self.transport in self.reactor.writers:
            self.transport.doWrite()
            got += self.drain()
        self.assertFalse(self.connection.sending_paused)  # (Twisted said it holds nothing)
        self.send(b"c" * 10)  # sent directly: nothing waits for the reactor
        self.assertNotIn(self.transport, self.reactor.writers)
        got += self.drain()
        self.assertEqual(got, b"a" * 1_000_000 + b"b" * 10 + b"c" * 10)

    def test_a_transport_closed_by_someone_else_still_closes(self) -> None:
        """``loseConnection`` called on the transport itself (Twisted's ``ClientService``
        stopping a link does) closes the connection once its bytes are sent, although the
        sender is the transport's pull producer (which Twisted waits for)."""
        self.send(b"a" * 1_000_000)
        self.transport.loseConnection()
        got, ended = b"", None
        for _ in range(10_000):
            if self.transport not in self.reactor.writers:
                break
            ended = self.transport.doWrite()
            got += self.drain()
        self.assertIsInstance(ended, ConnectionDone)
        self.assertEqual(got, b"a" * 1_000_000)

    def test_the_stop_half_closes_and_reads_what_the_client_sent(self) -> None:
        """The broker's stop (``close_in_order``) closes a plain socket's sending side once
        Twisted has sent what it holds (the client reads every byte, then the end of the
        stream) and reads on until the client closes: bytes of the client's left unread (a
        PINGREQ sent while the final save paused reading) would make the kernel reset the
        socket at its close, throwing away what it still held for the client."""
        self.connection.pause_reading("the final save")
        self.peer.send(packets.PINGREQ)
        self.send(b"a" * 1_000_000)
        self.connection.close_in_order(1.0)
        self.assertIn(self.transport, self.reactor.readers)
        got = b""
        for _ in range(10_000):
            if self.transport not in self.reactor.writers:
                break
            self.assertIsNone(self.transport.doWrite())
            got += self.peer.recv(1 << 20)
        while chunk := self.peer.recv(1 << 20):  # then the end of the stream (b""), not a reset
            got += chunk
        self.assertEqual(got, b"a" * 1_000_000)
        self.peer.shutdown(socket.SHUT_WR)  # the client closes its side
        ended = None
        for _ in range(10):
            ended = self.transport.doRead()
            if ended is not None:
                break
        self.assertIsInstance(ended, ConnectionDone)

    def run_writes(self, transport: tcp.Connection) -> None:
        """Twisted's writes, as the reactor runs them, until it has nothing left to write; a
        connection they end is closed as the reactor closes it."""
        for _ in range(10_000):
            if transport not in self.reactor.writers:
                return
            ended = transport.doWrite()
            if ended is not None:
                transport.connectionLost(Failure(ended))
                return

    def read_to_the_end(self, peer: socket.socket) -> bytes:
        """What the client reads, up to the end of the stream (a reset raises
        ConnectionResetError: the kernel threw away what it still held for the client)."""
        got = b""
        while chunk := peer.recv(1 << 20):
            got += chunk
        return got

    def client_closes(self, transport: tcp.Connection, peer: socket.socket) -> None:
        """The client closes its side: the broker reads what it sent meanwhile (and drops it),
        then the end of the stream, and the connection ends (ConnectionDone)."""
        self.assertIn(transport, self.reactor.readers)  # (read on after the half-close)
        peer.shutdown(socket.SHUT_WR)
        ended = None
        for _ in range(10):
            ended = transport.doRead()
            if ended is not None:
                break
        self.assertIsInstance(ended, ConnectionDone)

    def test_a_refused_connect_gets_its_connack_then_a_close_not_a_reset(self) -> None:
        """A client refused (CONNACK 5, not authorized) that sent a PINGREQ after its CONNECT,
        unread when the broker closes, reads its CONNACK and then the end of the stream. The
        broker closed such a connection with its PINGREQ unread, and the kernel reset it: the
        client got a connection error instead of its CONNACK."""
        self.peer.send(packets.connect("refused"))
        self.assertIsNone(self.transport.doRead())
        self.assertEqual([c for c, _ in self.acceptor.connects], [self.connection])
        self.peer.send(packets.PINGREQ)  # (not read yet: the refusal comes first)
        self.connection.refuse(5)
        self.factory.flush()
        self.run_writes(self.transport)
        self.assertEqual(self.read_to_the_end(self.peer), packets.packet(0x20, b"\x00\x05"))
        self.client_closes(self.transport, self.peer)

    def test_a_refused_protocol_level_gets_its_connack_then_a_close_not_a_reset(self) -> None:
        """A CONNECT of an unsupported protocol level (a violation answered with CONNACK 1,
        §3.1.2.2) followed by a PINGREQ the broker has not read: the client reads its CONNACK,
        then the end of the stream; nothing more is sent, what it sent is dropped."""
        self.peer.send(packets.connect("v5", level=5))
        self.assertIsNone(self.transport.doRead())
        self.peer.send(packets.PINGREQ)
        self.factory.flush()
        self.run_writes(self.transport)
        self.assertEqual(self.read_to_the_end(self.peer), packets.packet(0x20, b"\x00\x01"))
        self.client_closes(self.transport, self.peer)
        self.assertEqual(self.acceptor.connects, [])

    def test_a_connection_taken_over_gets_its_last_delivery_then_a_close(self) -> None:
        """The old connection of a client id that connects again, whose client had sent a
        PINGREQ the broker has not read, gets the delivery written to it in the turn of the
        takeover, then the end of the stream, not a reset (which threw both away)."""
        clock = Clock()
        broker = make_broker(self, clock)
        self.patch(broker.plugins, "authenticate", lambda view: succeed(True))
        factory = MQTTListenerFactory("default", broker, clock, 1 << 20, 5.0)
        old, old_transport, old_peer = self.open(factory)
        for sent in (packets.connect("twin"), packets.subscribe(("t/#", 0))):
            old_peer.send(sent)
            self.assertIsNone(old_transport.doRead())
            clock.advance(0)
        self.assertEqual(self.drain(old_peer), packets.CONNACK_ACCEPTED + packets.packet(0x90, b"\x00\x01\x00"))
        old_peer.send(packets.PINGREQ)  # (not read yet)
        new, new_transport, new_peer = self.open(factory)
        new_peer.send(packets.connect("twin"))
        broker.publish_internal("t/x", b"the last one", 0, False)  # to the old connection, this turn
        self.assertIsNone(new_transport.doRead())  # the takeover
        clock.advance(0)
        self.run_writes(old_transport)
        self.assertEqual(self.read_to_the_end(old_peer), packets.publish("t/x", b"the last one"))
        self.client_closes(old_transport, old_peer)
        self.assertIs(broker.connection_of("twin"), new)

    def test_other_transports_are_written_as_before(self) -> None:
        """TLS, the WebSocket adapter or a test's transport get every byte through their write."""
        self.assertIsNone(plain_socket(StringTransport()))
