"""A subscriber's unacknowledged deliveries, driven by StringTransport and task.Clock:
the window, and which acknowledgement ends which delivery (§4.3, §4.4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker import persistence
from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.clientsession import PUBREC_SEEN
from gateway.broker.core import GatewayBroker
from gateway.broker.persistence import BrokerStateStore
from gateway.mqtt import packets
from tests.broker import packets as rawpackets
from tests.broker.harness import ANONYMOUS, start_broker
from tests.broker.test_delivery import DeliveryTestCase
from tests.broker.test_durable_ack import CONFIG, attached, make_broker
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

    def test_resends_are_counted_apart_and_every_byte_written(self) -> None:
        """A delivery resent with DUP counts once in ``messages_out`` and its payload once in
        ``payload_bytes_out``, and in ``messages_resent`` (a PUBREL resent is not a message);
        the listener's ``bytes_sent`` counts every byte written, resends and PUBRELs too."""
        factory = self.handler.connection.factory
        self.handler.deliver("t", b"one", 1, False)
        self.handler.deliver("t", b"two", 2, False)
        written = self.sent()
        self.receive(packets.ack(packets.PUBREC, 2))
        written += self.sent()
        self.handler.resend_inflight()
        resent = self.sent()
        self.assertEqual(resent, packets.publish("t", b"one", 1, False, 1, dup=True) + packets.ack(packets.PUBREL, 2))
        self.assertEqual(self.broker.messages_out, [0, 1, 1])
        self.assertEqual(self.broker.payload_bytes_out, 6)
        self.assertEqual(self.broker.messages_resent, 1)
        self.assertEqual(factory.bytes_sent, len(written) + len(resent))


#: ``max_inflight_bytes`` of :class:`InflightBytesTests`; a QoS 1/2 PUBLISH of :data:`FORTY`
#: to ``t`` takes 47 bytes (2 of fixed header, 3 of topic, 2 of packet id), so two fit, not three.
LIMIT = 100
FORTY = b"x" * 40


class InflightBytesTests(SynchronousTestCase):
    """One subscriber whose window is bounded by ``max_inflight_bytes`` (100) long before its
    count (100 messages): what would take the bytes in flight past it waits in the session's
    queue, under the queue's own bounds (2 messages). One client that read and never
    acknowledged 1 MB QoS 1 messages had its whole window of 100 of them in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        loop = asyncio.new_event_loop()  # amqtt's plugin manager wants one; nothing runs on it here
        self.addCleanup(loop.close)
        self.broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), self.clock, max_inflight_bytes=LIMIT,
                                    max_queued_messages=2)
        self.handler, self.transport = attached(self.broker, "sub", self.clock)
        self.handler.connection.framer.feed(packets.connect("sub", 30, True))
        self.session = self.handler.session

    sent = InflightTests.sent
    receive = InflightTests.receive

    def assert_in_flight(self, ids: list[int]) -> None:
        """``ids`` are in flight, and the session's byte count is what their entries hold."""
        inflight = self.session.inflight_out
        self.assertEqual(sorted(inflight), ids)
        self.assertEqual(self.session.inflight_bytes, sum(map(len, inflight.values())))

    def test_bytes_bound_the_window(self) -> None:
        """Two messages of 47 bytes go; a third would make 141 bytes in flight, past 100, and
        waits in the queue; a PUBACK sends it."""
        for _ in range(3):
            self.handler.deliver("t", FORTY, 1, False)
        self.assertEqual(self.sent(), packets.publish("t", FORTY, 1, False, 1) + packets.publish("t", FORTY, 1, False, 2))
        self.assert_in_flight([1, 2])
        self.assertEqual(self.session.inflight_bytes, 94)
        self.assertEqual(len(self.handler.outbox), 1)
        self.receive(packets.ack(packets.PUBACK, 1))
        self.assertEqual(self.sent(), packets.publish("t", FORTY, 1, False, 3))
        self.assert_in_flight([2, 3])
        self.assertEqual(len(self.handler.outbox), 0)

    def test_a_message_larger_than_the_limit_goes_alone(self) -> None:
        """A message of 500 bytes goes when nothing is in flight (else it could never go); the
        next one, of one byte, and a QoS 0 one behind it (arrival order) wait for its PUBACK."""
        self.handler.deliver("t", b"b" * 500, 1, False)
        self.handler.deliver("t", b"s", 1, False)
        self.handler.deliver("t", b"z", 0, False)
        self.assertEqual(self.sent(), packets.publish("t", b"b" * 500, 1, False, 1))
        self.assert_in_flight([1])
        self.receive(packets.ack(packets.PUBACK, 1))
        self.assertEqual(self.sent(), packets.publish("t", b"s", 1, False, 2) + packets.publish("t", b"z", 0, False))
        self.assert_in_flight([2])

    def test_waiting_messages_meet_the_queue_bounds(self) -> None:
        """Behind a window full of bytes, the queue's bounds and overflow policy apply as
        behind a full count: of four more messages, the queue of two keeps the first two
        (``drop_new``), and the drops are counted."""
        self.handler.deliver("t", b"b" * 500, 1, False)
        for n in range(4):
            self.handler.deliver("t", b"%d" % n, 1, False)
        self.sent()
        self.assertEqual([m.payload for m in self.handler.outbox], [b"0", b"1"])
        self.assertEqual((self.handler.outbox.dropped_qos12, self.broker.queue_policy.dropped), (2, [0, 2, 0]))

    def test_pubrec_frees_the_bytes(self) -> None:
        """A QoS 2 delivery PUBREC'd keeps no message (only PUBREL is resent): its bytes leave
        the window at once, and what waited for them goes after the PUBREL, before PUBCOMP."""
        for _ in range(3):
            self.handler.deliver("t", FORTY, 2, False)
        self.sent()
        self.receive(packets.ack(packets.PUBREC, 1))
        self.assertEqual(self.sent(), packets.ack(packets.PUBREL, 1) + packets.publish("t", FORTY, 2, False, 3))
        self.assert_in_flight([1, 2, 3])
        self.assertEqual(self.session.inflight_bytes, 94)
        self.receive(packets.ack(packets.PUBCOMP, 1))
        self.assert_in_flight([2, 3])

    def test_zero_is_no_limit(self) -> None:
        """``max_inflight_bytes: 0`` (mosquitto's no limit): only the count bounds the window."""
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), self.clock, max_inflight=3,
                               max_inflight_bytes=0)
        handler, transport = attached(broker, "other", self.clock)
        for n in range(4):
            handler.deliver("t", b"%d" % n * 1000, 1, False)
        self.assertEqual(sorted(handler.session.inflight_out), [1, 2, 3])
        self.assertEqual(len(handler.outbox), 1)

    def test_restored_deliveries_count_in_bytes(self) -> None:
        """A persistent session's unacknowledged deliveries restored from the checkpoint count
        in its bytes in flight (a PUBREC'd one as nothing), so its client's window after a
        restart is as full as before it."""
        session = self.broker.create_offline_session("p")
        session.inflight_out[7] = packets.publish("s/1", FORTY, 1, False, 7)
        session.inflight_out[8] = PUBREC_SEEN
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(self.broker))
        again = make_broker(self, Clock())
        persistence.restore(again, store.load() or {})
        self.assertEqual(again.sessions["p"].inflight_bytes, len(packets.publish("s/1", FORTY, 1, False, 7)))


class InflightBytesServiceTests(DeliveryTestCase):
    """``max_inflight_bytes`` from the ``broker:`` section, on a real broker over TCP."""

    @inlineCallbacks
    def test_a_subscriber_that_never_acknowledges_holds_the_limit(self):
        """A subscriber that reads and never acknowledges gets the QoS 1 messages of 1,000
        bytes (1,012-byte PUBLISHes) that fit in ``max_inflight_bytes: 2100``, two; the three
        others wait in its queue, and its PUBACK lets the next one go. It got all five (its
        window held 100 of them, up to 100 MiB of 1 MB messages with the defaults)."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
            "max_inflight_bytes": 2100})
        subscriber = yield self.subscribed(service, "sub", ("big/#", 1), auto_ack=False)
        publisher = yield self.client(service, "pub")
        payloads = [b"%d" % n * 1000 for n in range(5)]
        publisher.transport.write(b"".join(rawpackets.publish("big/t", p, qos=1, packet_id=n + 1)
                                           for n, p in enumerate(payloads)))
        yield publisher.until(lambda: len(publisher.others) >= 6, reactor)  # CONNACK and 5 PUBACKs: all routed
        yield subscriber.until(lambda: len(subscriber.publishes) >= 2, reactor)
        session = service.broker.sessions["sub"]
        self.assertEqual((session.inflight_bytes, len(session.outbox)), (2 * 1012, 3))
        subscriber.transport.write(packets.ack(packets.PUBACK, subscriber.publishes[0][3]))
        yield subscriber.until(lambda: len(subscriber.publishes) >= 3, reactor)
        self.assertEqual([p[1] for p in subscriber.publishes], payloads[:3])
