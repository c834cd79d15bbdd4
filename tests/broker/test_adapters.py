"""The amqtt reader/writer adapters over a Twisted transport (StringTransport)."""

import asyncio

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.adapters import READ_HIGH_WATER, TransportReader, TransportWriter


class AdapterTests(SynchronousTestCase):
    """Reads have readexactly semantics; writes go to the transport; back-pressure both ways."""

    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)

    def run_until(self, coroutine):
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, 1))

    def test_read_exactly_across_feeds(self) -> None:
        """``read(n)`` waits until n bytes arrived, however they were split."""
        reader = TransportReader(self.loop)
        task = self.loop.create_task(reader.read(5))
        self.loop.call_soon(reader.feed, b"ab")
        self.loop.call_soon(reader.feed, b"cdef")
        self.assertEqual(self.run_until(task), b"abcde")
        self.assertEqual(self.run_until(reader.read(1)), b"f")

    def test_eof_ends_reads(self) -> None:
        """At EOF a short read raises IncompleteReadError (amqtt's 'no more data')."""
        reader = TransportReader(self.loop)
        reader.feed(b"xy")
        reader.feed_eof()
        with self.assertRaises(asyncio.IncompleteReadError) as raised:
            self.run_until(reader.read(3))
        self.assertEqual(raised.exception.partial, b"xy")

    def test_reader_pauses_transport_when_full(self) -> None:
        """Too much unread data pauses the socket; reading it resumes."""
        transport = StringTransport()
        reader = TransportReader(self.loop, transport)
        reader.feed(b"x" * (READ_HIGH_WATER + 1))
        self.assertEqual(transport.producerState, "paused")
        self.run_until(reader.read(READ_HIGH_WATER))
        self.assertEqual(transport.producerState, "producing")

    def test_writer_writes_and_drains(self) -> None:
        """Writes reach the transport; drain waits while the transport paused us."""
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4242))
        writer = TransportWriter(self.loop, transport)
        writer.write(b"\x20\x02\x00\x00")
        self.assertEqual(transport.value(), b"\x20\x02\x00\x00")
        self.assertEqual(writer.get_peer_info(), ("127.0.0.1", 4242))
        self.assertIsNone(writer.get_ssl_info())
        writer.pauseProducing()
        drained = self.loop.create_task(writer.drain())
        self.loop.call_soon(writer.resumeProducing)
        self.run_until(drained)

    def test_writer_close_waits_for_connection_lost(self) -> None:
        """close() loses the connection and returns once it is gone; later writes are dropped."""
        transport = StringTransport(peerAddress=UNIXAddress(b"/run/x.sock"))
        writer = TransportWriter(self.loop, transport)
        self.assertEqual(writer.get_peer_info(), ("unix:/run/x.sock", 0))
        closing = self.loop.create_task(writer.close())
        self.loop.call_soon(writer.connection_lost)
        self.run_until(closing)
        self.assertTrue(transport.disconnecting)
        writer.write(b"late")
        self.assertEqual(transport.value(), b"")
