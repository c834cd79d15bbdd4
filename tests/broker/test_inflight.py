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
from tests.logevents import capture_log_events

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

    def test_unknown_acknowledgements_are_ignored(self) -> None:
        """A PUBACK, PUBREC or PUBCOMP for an id with nothing in flight ends nothing and
        keeps the connection (§4.3: a PUBREC still gets its PUBREL, §4.3.3)."""
        self.handler.deliver("t", b"one", 1, False)
        self.handler.deliver("t", b"two", 2, False)
        self.sent()
        self.receive(packets.ack(packets.PUBACK, 99) + packets.ack(packets.PUBCOMP, 99)
                     + packets.ack(packets.PUBREC, 99))
        self.assertEqual(self.sent(), packets.ack(packets.PUBREL, 99))
        self.assertEqual(sorted(self.handler.session.inflight_out), [1, 2])
        self.assertFalse(self.transport.disconnecting)

    def assert_wrong_ack_closes(self, qos: int, *acks: tuple[int, int], logged: str) -> None:
        """After the delivery (id 1 at ``qos``), the acknowledgements ``acks`` (type, id)
        and a PINGREQ in one read: the last acknowledgement breaks [MQTT-4.3.2-2] or
        [MQTT-4.3.3-2], so the connection is closed as a protocol violation [MQTT-4.8.0-1]:
        counted and logged (saying ``logged``), nothing after it in the read handled (no
        PINGRESP), the delivery still in flight."""
        events = capture_log_events(self)
        self.handler.deliver("t", b"m", qos, False)
        self.sent()
        *before, (wrong, packet_id) = acks
        answers = b"".join(packets.ack(packets.PUBREL, i) for kind, i in before if kind == packets.PUBREC)
        self.receive(b"".join(packets.ack(kind, i) for kind, i in acks) + packets.PINGREQ_PACKET)
        self.assertEqual(self.sent(), answers)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.handler.connection.factory.violations, 1)
        self.assertEqual(list(self.handler.session.inflight_out), [packet_id])
        closing = [str(e["closing"]) for e in events if "closing" in e]
        self.assertEqual(len(closing), 1)
        self.assertTrue(closing[0].endswith(f": {logged} [MQTT-4.8.0-1]"), closing)

    def test_pubrec_for_a_qos1_delivery_closes(self) -> None:
        """A QoS 1 delivery answered with PUBREC (not PUBACK [MQTT-4.3.2-2]): closed, no PUBREL."""
        self.assert_wrong_ack_closes(1, (packets.PUBREC, 1), logged="PUBREC for its QoS 1 delivery 1")

    def test_pubcomp_for_a_qos1_delivery_closes(self) -> None:
        """A QoS 1 delivery answered with PUBCOMP: closed."""
        self.assert_wrong_ack_closes(1, (packets.PUBCOMP, 1), logged="PUBCOMP for its QoS 1 delivery 1")

    def test_puback_for_a_qos2_delivery_closes(self) -> None:
        """A QoS 2 delivery answered with PUBACK (not PUBREC [MQTT-4.3.3-2]): closed."""
        self.assert_wrong_ack_closes(2, (packets.PUBACK, 1), logged="PUBACK for its QoS 2 delivery 1")

    def test_pubcomp_before_pubrec_closes(self) -> None:
        """A QoS 2 delivery answered with PUBCOMP before any PUBREC: closed, still in flight."""
        self.assert_wrong_ack_closes(2, (packets.PUBCOMP, 1), logged="PUBCOMP for its QoS 2 delivery 1")

    def test_puback_after_pubrec_closes(self) -> None:
        """A QoS 2 delivery PUBREC'd, then PUBACK'd instead of PUBCOMP'd: closed."""
        self.assert_wrong_ack_closes(2, (packets.PUBREC, 1), (packets.PUBACK, 1),
                                     logged="PUBACK for its QoS 2 (PUBREC'd) delivery 1")

    def test_pubrec_again_gets_pubrel_again(self) -> None:
        """A second PUBREC for a QoS 2 delivery already PUBREC'd is answered with PUBREL again
        (the client may not have had the first): no violation."""
        self.handler.deliver("t", b"two", 2, False)
        self.sent()
        self.receive(packets.ack(packets.PUBREC, 1) + packets.ack(packets.PUBREC, 1))
        self.assertEqual(self.sent(), packets.ack(packets.PUBREL, 1) * 2)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.handler.session.inflight_out, {1: PUBREC_SEEN})

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
