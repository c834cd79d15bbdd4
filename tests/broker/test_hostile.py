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
