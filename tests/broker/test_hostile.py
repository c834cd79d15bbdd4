"""Hostile and unusual clients over real sockets on 127.0.0.1: whatever one sends, the broker
answers it as MQTT 3.1.1 says (or closes that connection), stays responsive, and keeps
serving a well-behaved client beside it."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from tests.broker import packets
from tests.broker.harness import eventually, port_of, raw_connect, start_broker
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
        (quadratic), which held the reactor, and every other client, for about a minute."""
        service = yield start_broker(self, reactor)
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
        """A client sends 12 MB of PUBRELs for packet ids it never used without reading their
        PUBCOMPs: the broker stops reading from it (it kept reading, and kept every PUBCOMP,
        as much as the client sent, in memory). Once the client reads, every PUBREL is
        answered (§4.3.3: PUBCOMP whatever the id); a bystander is served throughout."""
        service = yield start_broker(self, reactor)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.CONNECT_OK)
        yield eventually(reactor, lambda: raw.received == packets.CONNACK_ACCEPTED)
        raw.received = b""
        (connection,) = service.factories["default"].connections
        raw.transport.pauseProducing()  # the client reads nothing from now on
        count = 3_000_000
        raw.transport.write(b"".join(packets.ack(6, i % 65535 + 1) for i in range(count)))
        yield eventually(reactor, lambda: connection.reading_paused, timeout=20)
        yield self.assert_still_serving(service)
        raw.transport.resumeProducing()
        yield eventually(reactor, lambda: len(raw.received) >= 4 * count, timeout=60)
        self.assertEqual(raw.received, b"".join(packets.ack(7, i % 65535 + 1) for i in range(count)))
        self.assertFalse(connection.reading_paused)
