"""Delivery rules over real sockets: keep-alive, retained messages, overlapping subscriptions, $ topics, slow clients."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.broker import packets
from tests.broker.harness import port_of, start_broker
from tests.broker.mqttraw import scripted_connect


class DeliveryTestCase(TestCase):
    """A broker per test and scripted clients that are closed before it stops."""

    timeout = 30

    @inlineCallbacks
    def client(self, service, client_id: str, *extra: bytes, auto_ack: bool = True, **connect: object):
        client = yield scripted_connect(reactor, port_of(service), auto_ack)
        self.addCleanup(lambda: client.transport.abortConnection())
        client.transport.write(packets.connect(client_id, **connect) + b"".join(extra))  # type: ignore[arg-type]
        yield client.until(lambda: client.others, reactor)  # the CONNACK
        return client

    @inlineCallbacks
    def subscribed(self, service, client_id: str, *filters: tuple[str, int], **connect: object):
        client = yield self.client(service, client_id, packets.subscribe(*filters), **connect)
        yield client.until(lambda: len(client.others) >= 2, reactor)  # the SUBACK
        return client


class KeepAliveTests(DeliveryTestCase):
    """§3.1.2.10 enforced by the connection."""

    @inlineCallbacks
    def test_3_1_2_10_silence_closes_and_publishes_will(self):
        """[MQTT-3.1.2-24] no packet within 1.5x the keep-alive closes the connection, in order
        (the client reads the end of the stream, not a reset); the will goes out."""
        service = yield start_broker(self, reactor)
        watcher = yield self.subscribed(service, "watcher", ("wills/#", 1))
        quiet = yield self.client(service, "quiet", keep_alive=1, flags=0x02 | 0x04 | 0x08,
                                  will=("wills/quiet", b"gone"))
        started = reactor.seconds()
        yield quiet.lost.addTimeout(5, reactor)
        self.assertGreaterEqual(reactor.seconds() - started, 1.3)
        quiet.reason.trap(ConnectionDone)
        yield watcher.until(lambda: watcher.publishes, reactor)
        self.assertEqual(watcher.publishes[0][:3], ("wills/quiet", b"gone", 1))

    @inlineCallbacks
    def test_3_1_2_10_pings_keep_the_connection(self):
        """A client that sends PINGREQ within the keep-alive stays connected and gets PINGRESP."""
        service = yield start_broker(self, reactor)
        client = yield self.client(service, "pinger", keep_alive=1)
        for _ in range(4):
            yield deferLater(reactor, 0.5, lambda: None)
            client.transport.write(packets.PINGREQ)
        yield client.until(lambda: len(client.others) >= 5, reactor)
        self.assertFalse(client.lost.called)
        self.assertEqual(client.others[-1], (0xD0, b""))


class RetainedTests(DeliveryTestCase):
    """§3.3.1.3 retained messages."""

    @inlineCallbacks
    def test_3_3_1_3_zero_length_removes_at_every_qos(self):
        """[MQTT-3.3.1-10] a zero-length retained PUBLISH at QoS 0, 1 or 2 removes the retained message."""
        service = yield start_broker(self, reactor)
        publisher = yield self.client(service, "pub")
        for qos in (0, 1, 2):
            publisher.transport.write(packets.publish(f"r/{qos}", b"kept", qos=1, packet_id=10 + qos, retain=True))
            publisher.transport.write(packets.publish(f"r/{qos}", b"", qos=qos, packet_id=20 + qos, retain=True))
        publisher.transport.write(packets.publish("r/stays", b"here", retain=True))
        yield publisher.until(lambda: len(publisher.others) >= 6, reactor)  # acks of the QoS 1/2 publishes
        late = yield self.subscribed(service, "late", ("r/#", 2))
        yield late.until(lambda: late.publishes, reactor)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([p[:2] for p in late.publishes], [("r/stays", b"here")])
        self.assertTrue(late.publishes[0][4], "delivered with RETAIN set")

    @inlineCallbacks
    def test_3_3_1_3_retained_delivered_at_lower_qos(self):
        """A new subscriber gets a retained message at min(its QoS, the message's QoS)."""
        service = yield start_broker(self, reactor)
        publisher = yield self.client(service, "pub")
        publisher.transport.write(packets.publish("q/0", b"zero", qos=0, retain=True)
                                  + packets.publish("q/2", b"two", qos=2, packet_id=5, retain=True))
        yield publisher.until(lambda: len(publisher.others) >= 2, reactor)  # CONNACK, PUBREC
        low = yield self.subscribed(service, "low", ("q/#", 1))
        yield low.until(lambda: len(low.publishes) == 2, reactor)
        self.assertEqual(sorted((p[0], p[2]) for p in low.publishes), [("q/0", 0), ("q/2", 1)])


    @inlineCallbacks
    def test_retained_messages_go_out_parents_first(self):
        """A wildcard subscription gets a topic's retained message before those under it, as
        mosquitto sends them (siblings in the order of their names), not in the order the
        topics were first retained (MQTT 3.1.1 leaves the order open)."""
        service = yield start_broker(self, reactor)
        publisher = yield self.client(service, "pub")
        topics = ["1/2/3/4/5/6/7", "1/2/3/4", "b", "1", "1/a"]
        for packet_id, topic in enumerate(topics, 1):
            publisher.transport.write(packets.publish(topic, b"r", qos=1, packet_id=packet_id, retain=True))
        yield publisher.until(lambda: len(publisher.others) > len(topics), reactor)  # CONNACK, PUBACKs
        late = yield self.subscribed(service, "late", ("#", 0))
        yield late.until(lambda: len(late.publishes) == len(topics), reactor)
        self.assertEqual([p[0] for p in late.publishes], ["1", "1/2/3/4", "1/2/3/4/5/6/7", "1/a", "b"])


class OverlapAndDollarTests(DeliveryTestCase):
    """§3.3.5 overlapping subscriptions and §4.7.2 $ topics."""

    @inlineCallbacks
    def test_3_3_5_overlapping_subscriptions_one_copy_at_max_qos(self):
        """A message matching several of a client's filters arrives once, at the highest granted QoS."""
        service = yield start_broker(self, reactor)
        sub = yield self.subscribed(service, "sub", ("a/#", 0), ("a/+", 2), ("a/b", 1))
        publisher = yield self.client(service, "pub")
        publisher.transport.write(packets.publish("a/b", b"two", qos=2, packet_id=1)
                                  + packets.publish("a/b", b"one", qos=1, packet_id=2)
                                  + packets.publish("a/b", b"zero"))
        yield sub.until(lambda: len(sub.publishes) >= 3, reactor)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([(p[1], p[2]) for p in sub.publishes], [(b"two", 2), (b"one", 1), (b"zero", 0)])

    @inlineCallbacks
    def test_4_7_2_dollar_topics(self):
        """[MQTT-4.7.2-1] # and + do not match $ topics; a client's publish to $ is dropped (acknowledged)."""
        service = yield start_broker(self, reactor)
        wild = yield self.subscribed(service, "wild", ("#", 1), ("+/x", 1))
        exact = yield self.subscribed(service, "exact", ("$SYS/#", 1))
        publisher = yield self.client(service, "pub")
        publisher.transport.write(packets.publish("$SYS/x", b"forged", qos=1, packet_id=3))
        yield publisher.until(lambda: len(publisher.others) >= 2, reactor)
        self.assertEqual(publisher.others[1], (0x40, b"\x00\x03"))
        yield service.bus.publish("$SYS/x", b"internal", 1)
        yield exact.until(lambda: exact.publishes, reactor)
        self.assertEqual(exact.publishes[0][:2], ("$SYS/x", b"internal"))
        self.assertEqual(wild.publishes, [])
        self.assertEqual(service.broker.dollar_publishes_dropped, 1)


class SlowSubscriberTests(DeliveryTestCase):
    """A fast publisher meets a slow subscriber: within its queue's bounds nothing is lost.

    (Past them the subscriber loses its own messages: ``tests/broker/test_backpressure.py``.)
    """

    @inlineCallbacks
    def test_no_loss_when_subscriber_stops_reading(self):
        """A subscriber that stops reading for a while still gets every message its queue has room for, in order."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            "max_queued_messages": 4000, "max_inflight_messages": 10})
        count, payload = 3000, b"p" * 500
        for qos in (0, 1):
            sub = yield self.subscribed(service, f"slow{qos}", ("s/#", qos))
            sub.transport.pauseProducing()
            publisher = yield self.client(service, f"fast{qos}")
            publisher.transport.write(b"".join(packets.publish("s/t", payload + b"%d" % i, qos=qos, packet_id=i % 60000 + 1)
                                               for i in range(count)))
            yield deferLater(reactor, 1.0, lambda: None)
            sub.transport.resumeProducing()
            yield sub.until(lambda: len(sub.publishes) >= count, reactor, timeout=20)
            self.assertEqual([p[1] for p in sub.publishes], [payload + b"%d" % i for i in range(count)])
            self.assertEqual(service.broker.messages_dropped, 0)
            sub.transport.abortConnection()
            publisher.transport.abortConnection()
