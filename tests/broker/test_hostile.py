"""Hostile and unusual clients over real sockets on 127.0.0.1: whatever one sends, the broker
answers it as MQTT 3.1.1 says (or closes that connection), stays responsive, and keeps
serving a well-behaved client beside it."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from tests.broker import packets
from tests.broker.harness import ANONYMOUS, eventually, port_of, raw_connect, start_broker
from tests.broker.mqttraw import scripted_connect
from tests.broker.test_integration import BrokerTestCase


class HostileClientTestCase(BrokerTestCase):
    """A broker per test, and a check that a well-behaved client is still served."""

    @inlineCallbacks
    def assert_still_serving(self, service: Any) -> Any:
        """A paho client connects, subscribes, publishes at QoS 1 and gets its message back."""
        client = self.client()
        self.assertEqual((yield client.connect(port_of(service))), 0)
        yield client.subscribe("still/serving", 1)
        yield client.publish("still/serving", b"yes", 1)
        self.assertEqual((yield client.next_message()).payload, b"yes")


class ManyFiltersTests(HostileClientTestCase):
    """A SUBSCRIBE as large as ``max_packet_size`` allows is answered at once."""

    @inlineCallbacks
    def test_a_subscribe_with_ninety_thousand_filters_is_answered_at_once(self):
        """[MQTT-3.8.4-5] one SUBACK code per filter, here 90,000 of them in one 1 MiB packet,
        within seconds: each filter was added to the session's list by copying the list
        (quadratic), which held the reactor, and every other client, for about a minute.
        (``max_subscriptions`` is raised past them: its default, 1000, would refuse the rest.)"""
        service = yield start_broker(self, reactor, {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
                                                     "plugins": ANONYMOUS, "max_subscriptions": 90_000})
        count = 90_000
        subscribe = packets.subscribe(*[(f"f/{i}", i % 3) for i in range(count)], packet_id=7)
        self.assertLess(len(subscribe), 1 << 20)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.CONNECT_OK + subscribe)
        suback = packets.packet(0x90, b"\x00\x07" + bytes(i % 3 for i in range(count)))
        yield eventually(reactor, lambda: len(raw.received) >= 4 + len(suback) or raw.lost.called, timeout=10)
        self.assertEqual(raw.received, packets.CONNACK_ACCEPTED + suback)
        yield self.assert_still_serving(service)


class UnreadAnswersTests(HostileClientTestCase):
    """A client that sends and never reads costs the broker bounded memory and loses nothing."""

    @inlineCallbacks
    def test_a_client_that_does_not_read_is_not_read_until_it_does(self):
        """A client sends 1.2 MB of PUBRELs for packet ids it never used without reading their
        PUBCOMPs: the broker stops reading from it (it kept reading, and kept every PUBCOMP,
        as much as the client sent, in memory). Once the client reads, every PUBREL is
        answered (§4.3.3: PUBCOMP whatever the id); a bystander is served throughout.

        The broker's socket gets a small kernel send buffer, so that the broker's own bound,
        not the kernel's buffering (megabytes on loopback), is what fills: the test needs ten
        times fewer packets and stays quick on a loaded machine (it took 12 s and timed out
        at 30 s beside other work)."""
        service = yield start_broker(self, reactor)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.CONNECT_OK)
        yield eventually(reactor, lambda: raw.received == packets.CONNACK_ACCEPTED)
        raw.received = b""
        (connection,) = service.factories["default"].connections
        connection.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        raw.transport.pauseProducing()  # the client reads nothing from now on
        count = 300_000
        raw.transport.write(b"".join(packets.ack(6, i % 65535 + 1) for i in range(count)))
        yield eventually(reactor, lambda: connection.reading_paused, timeout=20)
        yield self.assert_still_serving(service)
        raw.transport.resumeProducing()
        yield eventually(reactor, lambda: len(raw.received) >= 4 * count, timeout=60)
        self.assertEqual(raw.received, b"".join(packets.ack(7, i % 65535 + 1) for i in range(count)))
        self.assertFalse(connection.reading_paused)


class OddSequenceTests(HostileClientTestCase):
    """Valid packets in odd orders, and odd uses of TCP."""

    @inlineCallbacks
    def test_a_publish_before_connect_closes_without_a_reply(self):
        """[MQTT-3.1.0-1] a PUBLISH as the first packet: closed, nothing answered, nothing delivered."""
        service = yield start_broker(self, reactor)
        watcher = yield scripted_connect(reactor, port_of(service))
        watcher.transport.write(packets.CONNECT_OK + packets.subscribe(("#", 1)))
        yield watcher.until(lambda: len(watcher.others) >= 2, reactor)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.publish("early", b"x", 1))
        yield raw.lost.addTimeout(5, reactor)
        self.assertEqual(raw.received, b"")
        yield self.assert_still_serving(service)
        self.assertNotIn("early", [p[0] for p in watcher.publishes])

    @inlineCallbacks
    def test_acknowledgements_for_ids_never_used(self):
        """§4.3.3, docs/configuration.md (Bad clients): on a persistent session, PUBACK and
        PUBCOMP for ids the broker never sent are ignored, PUBREC gets PUBREL and PUBREL
        gets PUBCOMP; the connection stays open."""
        service = yield start_broker(self, reactor, state_dir=self.mktemp())
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.connect("odd-acks", flags=0) + packets.ack(4, 9) + packets.ack(5, 10)
                            + packets.ack(7, 11) + packets.ack(6, 12) + packets.PINGREQ)
        answers = packets.CONNACK_ACCEPTED + packets.ack(6, 10) + packets.ack(7, 12) + b"\xd0\x00"
        yield eventually(reactor, lambda: len(raw.received) >= len(answers))
        self.assertEqual(raw.received, answers)
        self.assertFalse(raw.lost.called)
        yield self.assert_still_serving(service)

    @inlineCallbacks
    def test_packets_a_byte_per_segment(self):
        """A CONNECT and a QoS 1 PUBLISH sent one byte per TCP segment are handled as if sent whole."""
        service = yield start_broker(self, reactor)
        watcher = yield scripted_connect(reactor, port_of(service))
        watcher.transport.write(packets.CONNECT_OK + packets.subscribe(("split/#", 1)))
        yield watcher.until(lambda: len(watcher.others) >= 2, reactor)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.setTcpNoDelay(True)
        data = packets.connect("split") + packets.publish("split/1", b"z" * 300, 1, packet_id=77)
        for i in range(len(data)):
            raw.transport.write(data[i:i + 1])
            yield deferLater(reactor, 0.001, lambda: None)
        yield watcher.until(lambda: len(watcher.publishes) >= 1, reactor)
        self.assertEqual(watcher.publishes[0][:2], ("split/1", b"z" * 300))
        yield eventually(reactor, lambda: raw.received == packets.CONNACK_ACCEPTED + packets.ack(4, 77))

    @inlineCallbacks
    def test_a_client_that_half_closes(self):
        """A client that sends CONNECT and a QoS 1 PUBLISH and shuts down its sending side is
        treated as one that hung up (docs/broker.md, CONNECT): its message is delivered, its
        will published (no DISCONNECT came), its connection closed; nothing hangs."""
        service = yield start_broker(self, reactor)
        watcher = yield scripted_connect(reactor, port_of(service))
        watcher.transport.write(packets.CONNECT_OK + packets.subscribe(("#", 1)))
        yield watcher.until(lambda: len(watcher.others) >= 2, reactor)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.connect("half", flags=0x06, will=("half/will", b"gone"))
                            + packets.publish("half/data", b"q", 1, packet_id=5))
        raw.transport.loseWriteConnection()
        yield raw.lost.addTimeout(5, reactor)
        yield watcher.until(lambda: len(watcher.publishes) >= 2, reactor)
        self.assertEqual([p[:2] for p in watcher.publishes], [("half/data", b"q"), ("half/will", b"gone")])
        self.assertEqual(service.broker.live_client_ids, {"raw-client"})
        yield self.assert_still_serving(service)
