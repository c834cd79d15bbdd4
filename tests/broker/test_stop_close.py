"""The broker's stop closes its connections in order, and aborts only those that do not take
their last bytes within the grace: real broker and connections, StringTransports, task.Clock."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.connection import STOP_GRACE, MQTTConnection, MQTTListenerFactory
from gateway.mqtt.packets import publish
from tests.broker import packets
from tests.broker.test_durable_ack import make_broker

CONNECT_TIMEOUT = 10.0


class EndRecordingTransport(StringTransport):
    """A StringTransport that records how its connection was ended: ``close`` (in order, what
    was written is sent first) or ``abort`` (a reset: what the kernel holds is thrown away)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[str] = []

    def loseConnection(self) -> None:
        self.ends.append("close")
        super().loseConnection()

    def abortConnection(self) -> None:
        self.ends.append("abort")
        self.disconnected = True
        self.disconnecting = True


class StopCloseTests(SynchronousTestCase):
    """:meth:`GatewayBroker.shutdown` and :meth:`MQTTConnection.close_in_order` (what the broker
    service's stop calls for every connection of its listeners)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = make_broker(self, self.clock)
        self.factory = MQTTListenerFactory("default", self.broker, self.clock, 1 << 20, CONNECT_TIMEOUT)

    def open(self, client_id: str | None) -> tuple[MQTTConnection, EndRecordingTransport]:
        """A connection on the listener; with ``client_id``, its CONNECT accepted (a clean session)."""
        connection = self.factory.buildProtocol(None)
        assert connection is not None
        transport = EndRecordingTransport()
        connection.makeConnection(transport)
        if client_id is not None:
            self.patch(self.broker.plugins, "authenticate", lambda view: succeed(True))
            connection.dataReceived(packets.connect(client_id))
            self.clock.advance(0)  # the CONNACK goes out
            self.assertIn(client_id, self.broker.live)
            transport.clear()
        return connection, transport

    def test_a_delivery_written_before_the_stop_is_sent_then_the_connection_closes(self) -> None:
        """A delivery written in the reactor turn of the stop is handed to the transport, then
        the connection is closed in order (loseConnection: the kernel sends what it holds before
        its FIN); never aborted, which threw away what the kernel still held (a small packet
        written just before the stop was lost 299 times in 300). No will; nothing read after."""
        connection, transport = self.open("sub")
        connection.pause_reading(self)  # as the service's final save does
        self.broker.publish_internal("t", b"late", 0, False)  # no subscriber: nothing written
        connection.write(publish("t", b"the last one", 0))
        self.broker.shutdown(STOP_GRACE)
        self.assertEqual((transport.value(), transport.ends), (publish("t", b"the last one", 0), ["close"]))
        self.assertEqual(transport.producerState, "producing")  # a TLS transport reads the client's close alert
        connection.dataReceived(packets.PINGREQ)
        connection.connectionLost()  # the reactor sent it all, and closed
        self.clock.advance(STOP_GRACE * 2)
        self.assertEqual(transport.ends, ["close"])
        self.assertEqual(transport.value(), publish("t", b"the last one", 0))
        self.assertNotIn("sub", self.broker.live)

    def test_a_client_that_does_not_read_is_aborted_after_the_grace(self) -> None:
        """A connection still open ``grace`` seconds after it was closed in order (Twisted holds
        bytes its client does not read) is aborted then, not before, so that it cannot hold the
        stop up; and one without a session yet (no CONNECT) is closed the same way."""
        connection, transport = self.open("stuck")
        silent, silent_transport = self.open(None)
        grace = 0.5
        self.broker.shutdown(grace)
        silent.close_in_order(grace)  # as the service does for every connection left
        self.clock.advance(grace - 0.01)
        self.assertEqual((transport.ends, silent_transport.ends), (["close"], ["close"]))
        self.clock.advance(0.01)
        self.clock.advance(0)  # (the sweep closes them in the turn after it found them due)
        self.assertEqual((transport.ends, silent_transport.ends), (["close", "abort"], ["close", "abort"]))

    def test_one_closing_already_gets_no_longer_than_the_grace(self) -> None:
        """A connection closing already (after a protocol violation, or taken over: its client
        has ``connect_timeout`` to read its last bytes) is aborted once the stop's grace is up,
        not ``connect_timeout`` later; one whose own deadline comes first keeps it."""
        connection, transport = self.open(None)
        connection.close_in_order()
        connection.close_in_order(1.0)
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.assertEqual(transport.ends, ["close", "abort"])
        soon, soon_transport = self.open(None)
        soon.close_in_order()
        self.clock.advance(CONNECT_TIMEOUT - 0.5)
        soon.close_in_order(1.0)
        self.clock.advance(0.5)
        self.clock.advance(0)
        self.assertEqual(soon_transport.ends, ["close", "abort"])

    def test_a_keepalive_expiry_ends_the_session_at_once_and_closes_in_order(self) -> None:
        """No packet within 1.5 keep-alives [MQTT-3.1.2-24]: the session ends at once (its will
        is published, as when the network fails), and the connection is closed in order,
        reading on: a delivery written to it just before goes out first, then the end of the
        stream, and what the client sends from then on is dropped. It is aborted only if it is
        not closed within ``connect_timeout``. Before, it was aborted at once, and the kernel
        threw away what it still held for the client."""
        watcher, watcher_transport = self.open("watcher")
        watcher.dataReceived(packets.subscribe(("wills/#", 0)))
        self.clock.advance(0)
        watcher_transport.clear()
        doomed, transport = self.open(None)
        doomed.dataReceived(packets.connect("doomed", flags=0x06, keep_alive=2, will=("wills/doomed", b"gone")))
        self.clock.advance(0)
        transport.clear()
        self.clock.advance(2.9)
        doomed.write(publish("t", b"the last one", 0))
        self.clock.advance(0.1)
        self.clock.advance(0)  # (the sweep closes it in the turn after it found it due)
        self.assertEqual((transport.value(), transport.ends), (publish("t", b"the last one", 0), ["close"]))
        self.assertEqual(transport.producerState, "producing")
        self.assertNotIn("doomed", self.broker.live)
        self.clock.advance(0)
        self.assertEqual(watcher_transport.value(), publish("wills/doomed", b"gone", 0))
        doomed.dataReceived(packets.PINGREQ)  # dropped
        self.clock.advance(CONNECT_TIMEOUT)
        self.clock.advance(0)
        self.assertEqual((transport.value(), transport.ends), (publish("t", b"the last one", 0), ["close", "abort"]))
        doomed.connectionLost()
        self.assertEqual(watcher_transport.value(), publish("wills/doomed", b"gone", 0))  # (once)
