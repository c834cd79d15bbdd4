"""One connection's pause bookkeeping and keep-alive, driven by StringTransport and task.Clock."""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.adapters import READ_HIGH_WATER
from gateway.broker.connection import MQTTListenerFactory
from gateway.mqtt.packets import Packet
from tests.broker import packets

KEEP_ALIVE = 10  # seconds in the CONNECT: the connection closes after 15 s of silence


class RecordingSink:
    """A handler that keeps the packets it is given."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []

    def packet_received(self, packet: Packet) -> None:
        self.packets.append(packet)

    def connection_lost(self) -> None:
        pass


class ConnectionTestCase(SynchronousTestCase):
    """A connection on a StringTransport whose amqtt session never runs (the test plays the handler)."""

    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.clock = Clock()

        async def session(reader: Any, writer: Any, listener: str) -> None:
            return None

        self.factory = MQTTListenerFactory("default", session, self.loop, self.clock, 1 << 20, 5.0)
        self.connection = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)
        self.addCleanup(self.finish)

    def finish(self) -> None:
        assert self.connection.task is not None
        self.loop.run_until_complete(self.connection.task)

    def connected(self, keep_alive: int = KEEP_ALIVE) -> RecordingSink:
        """Send CONNECT and attach a handler, as amqtt does once it accepted the client."""
        self.connection.dataReceived(packets.connect("c", keep_alive=keep_alive))
        sink = RecordingSink()
        self.connection.attach(sink)
        return sink


class KeepAliveTests(ConnectionTestCase):
    """[MQTT-3.1.2-24] counts only time the broker was reading the client."""

    def test_silence_closes(self) -> None:
        """No packet for 1.5 times the keep-alive closes the connection."""
        self.connected()
        self.clock.advance(14.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnected, "aborted")

    def test_packets_keep_it_open(self) -> None:
        """Every packet starts the keep-alive over."""
        self.connected()
        for _ in range(5):
            self.clock.advance(10)
            self.connection.dataReceived(packets.PINGREQ)
        self.assertFalse(self.transport.disconnecting)

    def test_paused_connection_is_not_closed_for_silence(self) -> None:
        """While reading is paused (back-pressure) the client's silence is the broker's doing: no close."""
        self.connected()
        self.clock.advance(10)
        self.connection.pause_reading("queue")
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(3600)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keep_alive_starts_over_when_reading_resumes(self) -> None:
        """After the last pause ends, the client has a full 1.5 keep-alives again."""
        self.connected()
        self.connection.pause_reading("queue")
        self.connection.pause_reading("other queue")
        self.clock.advance(100)
        self.connection.resume_reading("queue")
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(100)
        self.assertFalse(self.transport.disconnecting)
        self.connection.resume_reading("other queue")
        self.assertEqual(self.transport.producerState, "producing")
        self.clock.advance(14.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnected)

    def test_packets_held_while_paused_go_out_on_resume(self) -> None:
        """Packets that arrived while paused are handed on, in order, when the pause ends."""
        sink = self.connected()
        self.connection.pause_reading("queue")
        self.connection.dataReceived(packets.publish("a", b"1") + packets.PINGREQ)
        self.assertEqual(sink.packets, [])
        self.connection.resume_reading("queue")
        self.assertEqual([p.packet_type for p in sink.packets], [3, 12])

    def test_unknown_resume_changes_nothing(self) -> None:
        """Resuming with a key that holds no pause leaves another key's pause in place."""
        self.connected()
        self.connection.pause_reading("queue")
        self.connection.resume_reading("never paused")
        self.assertTrue(self.connection.reading_paused)
        self.assertEqual(self.transport.producerState, "paused")

    def test_reader_pause_goes_through_the_connection(self) -> None:
        """amqtt's reader pausing for a huge unread backlog is one more pause: the keep-alive waits too."""
        self.connected()
        assert self.connection.reader is not None
        self.connection.reader.feed(b"x" * (READ_HIGH_WATER + 1))
        self.assertTrue(self.connection.reading_paused)
        self.clock.advance(3600)
        self.assertFalse(self.transport.disconnecting)
        self.loop.run_until_complete(self.connection.reader.read(READ_HIGH_WATER))
        self.assertFalse(self.connection.reading_paused)
        self.assertEqual(self.transport.producerState, "producing")
