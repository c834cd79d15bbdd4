"""A subscriber's unacknowledged deliveries, driven by StringTransport and task.Clock:
the window, and which acknowledgement ends which delivery (§4.3, §4.4)."""

from __future__ import annotations

import asyncio

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.clientsession import PUBREC_SEEN
from gateway.broker.core import GatewayBroker
from gateway.mqtt import packets
from tests.broker.test_durable_ack import CONFIG, attached

WINDOW = 2


class InflightTests(SynchronousTestCase):
    """One subscriber with a window of two, the acknowledgements fed through its connection."""

    def setUp(self) -> None:
        self.clock = Clock()
        loop = asyncio.new_event_loop()  # amqtt's plugin manager wants one; nothing runs on it here
        self.addCleanup(loop.close)
        self.broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), self.clock, max_inflight=WINDOW)
        self.handler, self.transport = attached(self.broker, "sub", self.clock)
        # The connection's framer has not seen this client's CONNECT (the test attached it):
        # let it count one, as after a real CONNECT.
        self.handler.connection.framer.feed(packets.connect("sub", 30, True))

    def sent(self) -> bytes:
        """What the client got since the last call (the turn's write)."""
        self.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return data

    def receive(self, data: bytes) -> None:
        self.handler.connection.dataReceived(data)

    def test_puback_frees_the_window(self) -> None:
        """A third QoS 1 message waits behind a full window; a PUBACK sends it."""
        for n in range(3):
            self.handler.deliver("t", b"%d" % n, 1, False)
        self.assertEqual(self.sent(), packets.publish("t", b"0", 1, False, 1) + packets.publish("t", b"1", 1, False, 2))
        self.receive(packets.ack(packets.PUBACK, 1))
        self.assertEqual(self.sent(), packets.publish("t", b"2", 1, False, 3))
        self.assertEqual(sorted(self.handler.session.inflight_out), [2, 3])

    def test_wrong_or_unknown_acknowledgements_are_ignored(self) -> None:
        """A PUBACK for a QoS 2 delivery or an unknown id, a PUBCOMP for a QoS 1 one, end nothing."""
        self.handler.deliver("t", b"one", 1, False)
        self.handler.deliver("t", b"two", 2, False)
        self.sent()
        self.receive(packets.ack(packets.PUBACK, 2) + packets.ack(packets.PUBACK, 99) + packets.ack(packets.PUBCOMP, 1))
        self.assertEqual(sorted(self.handler.session.inflight_out), [1, 2])
        self.assertFalse(self.transport.disconnecting)

    def test_qos2_flow(self) -> None:
        """PUBREC is answered with PUBREL and the delivery then waits for PUBCOMP; a
        reconnect would resend PUBREL only."""
        self.handler.deliver("t", b"two", 2, False)
        self.sent()
        self.receive(packets.ack(packets.PUBREC, 1))
        self.assertEqual(self.sent(), packets.ack(packets.PUBREL, 1))
        self.assertEqual(self.handler.session.inflight_out, {1: PUBREC_SEEN})
        self.handler.resend_inflight()
        self.assertEqual(self.sent(), packets.ack(packets.PUBREL, 1))
        self.receive(packets.ack(packets.PUBCOMP, 1))
        self.assertEqual(self.handler.session.inflight_out, {})

    def test_resend_sets_dup(self) -> None:
        """Unacknowledged QoS 1 deliveries go again with DUP set, with the same packet ids (§4.4)."""
        self.handler.deliver("t", b"one", 1, True)
        self.sent()
        self.handler.resend_inflight()
        self.assertEqual(self.sent(), packets.publish("t", b"one", 1, True, 1, dup=True))
