"""A slow client hurts only itself, over real sockets.

A subscriber that stops reading its socket fills its in-flight window (QoS 1/2) or
Twisted's send buffer (QoS 0), then its own bounded queue, and then loses its own
messages, oldest QoS 0 first, then QoS 1/2 by ``queue_overflow``. The broker never stops
reading from the publisher for it: the publisher (paho, QoS 1) is acknowledged and a
normal subscriber (a Twisted client that acknowledges at once) gets every message, as fast as without the slow one, and the
slow one's drops are counted in the broker's snapshot.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall

from tests.broker import packets
from tests.broker.harness import ANONYMOUS, port_of, start_broker
from tests.broker.test_delivery import DeliveryTestCase
from tests.mqttclient import TestClient

WINDOW, QUEUE = 20, 1000  # max_inflight_messages, max_queued_messages
#: Messages published before the normal subscriber must have them all: it shares the reactor
#: thread with the broker, the publisher (paho) has a thread of its own, so on a loaded
#: machine the publisher could outrun it by more than its own queue holds (the QoS 0 test's
#: 2 MB are 487 of its messages), and the normal one would lose its own messages.
BURST = 250
SECTION = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
           "max_queued_messages": QUEUE, "max_inflight_messages": WINDOW}
COUNT = 3000  # messages per phase
QUEUE_BYTES = 2 << 20  # max_queued_bytes of the QoS 0 test: 500 of its 4 KB messages
#: Small bounds for the policy tests.
SMALL_WINDOW, SMALL_QUEUE = 10, 50
SMALL = dict(SECTION, max_queued_messages=SMALL_QUEUE, max_inflight_messages=SMALL_WINDOW)
PERSISTENT = 0x00  # CONNECT flags: CleanSession=0


def held_connections(service: Any) -> list[Any]:
    """Connections the broker is not reading from."""
    return [connection for factory in service.factories.values() for connection in factory.connections
            if connection.reading_paused]


class SlowSubscriberIsolationTests(DeliveryTestCase):
    """One subscriber that never reads does not slow the publisher or the other subscribers."""

    timeout = 120

    def paho(self) -> TestClient:
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        return client

    @inlineCallbacks
    def flowing(self, service: Any, section: dict[str, Any], slow_qos: int, payload_size: int):
        """Publish COUNT messages twice (BURST at a time), without and then with a slow
        subscriber; the two durations.

        Checks on the way that the broker never stopped reading from anyone, the publisher
        got every acknowledgement and the normal subscriber every message, in order.
        """
        normal = yield self.subscribed(service, "normal", ("iso/#", 1))
        publisher = self.paho()
        self.assertEqual((yield publisher.connect(port_of(service))), 0)
        held: list[Any] = []
        sampler = LoopingCall(lambda: held.extend(held_connections(service)))
        sampler.start(0.005)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        durations = []
        for phase in ("alone", "with the slow one"):
            if phase != "alone":
                slow = yield self.subscribed(service, "slow", ("iso/#", slow_qos), auto_ack=False)
                slow.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                slow.transport.pauseProducing()  # it stops reading its socket
            started = time.monotonic()
            padding = b"." * payload_size
            for first in range(0, COUNT, BURST):
                last = min(first + BURST, COUNT)
                acks = [publisher.publish("iso/t", b"%s %d %s" % (phase.encode(), i, padding), 1)
                        for i in range(first, last)]
                yield gatherResults(acks)
                yield normal.until(lambda last=last: len(normal.publishes) >= last, reactor, timeout=30)
            durations.append(time.monotonic() - started)
            got = [p[1] for p in normal.publishes]
            del normal.publishes[:]
            self.assertEqual(got, [b"%s %d %s" % (phase.encode(), i, padding) for i in range(COUNT)])
        sampler.stop()
        self.assertEqual(held, [], "the broker stopped reading from a client")
        return durations

    @inlineCallbacks
    def test_slow_qos1_subscriber(self):
        """A QoS 1 subscriber that never reads (never acknowledges) loses every message past window + queue."""
        service = yield start_broker(self, reactor, SECTION)
        alone, with_slow = yield self.flowing(service, SECTION, 1, 100)
        self.assertLess(with_slow, 3 * alone + 2.0, f"publishing took {with_slow:.2f} s, {alone:.2f} s alone")
        snapshot = service.snapshot()
        expected = COUNT - WINDOW - QUEUE  # drop_new: the newest go
        self.assertEqual(snapshot.queue_drops, expected)
        self.assertEqual(snapshot.queue_drops_by_qos, (0, expected, 0))
        [slow] = snapshot.dropping_clients
        self.assertEqual((slow.client_id, slow.connected, slow.queued, slow.dropped_qos0, slow.dropped_qos12),
                         ("slow", True, QUEUE, 0, expected))

    @inlineCallbacks
    def test_slow_qos0_subscriber(self):
        """A QoS 0 subscriber that never reads loses its oldest messages once the socket and its queue are full."""
        section = dict(SECTION, max_queued_bytes=QUEUE_BYTES)
        service = yield start_broker(self, reactor, section)
        alone, with_slow = yield self.flowing(service, section, 0, 4000)
        self.assertLess(with_slow, 3 * alone + 2.0, f"publishing took {with_slow:.2f} s, {alone:.2f} s alone")
        snapshot = service.snapshot()
        self.assertGreater(snapshot.queue_drops, 0)
        self.assertEqual(snapshot.queue_drops_by_qos, (snapshot.queue_drops, 0, 0))
        [slow] = snapshot.dropping_clients
        self.assertEqual((slow.client_id, slow.dropped_qos0, slow.dropped_qos12), ("slow", snapshot.queue_drops, 0))
        self.assertLessEqual(slow.queued_bytes, QUEUE_BYTES)


class OverflowPolicyOverSocketsTests(DeliveryTestCase):
    """What a persistent session that lagged finds in its queue when it comes back, by ``queue_overflow``."""

    timeout = 60

    @inlineCallbacks
    def comeback(self, overflow: str):
        """A persistent lagger misses 200 QoS 1 messages, then a new connection takes its session over."""
        service = yield start_broker(self, reactor, dict(SMALL, queue_overflow=overflow))
        lagger = yield self.subscribed(service, "lagger", ("pol/#", 1), auto_ack=False, flags=PERSISTENT)
        lagger.transport.pauseProducing()
        publisher = yield self.client(service, "publisher")
        publisher.transport.write(b"".join(packets.publish("pol/t", b"%d" % i, qos=1, packet_id=i + 1)
                                           for i in range(200)))
        yield publisher.until(lambda: len(publisher.others) >= 201, reactor)  # CONNACK + every PUBACK
        self.assertEqual(service.snapshot().queue_drops, 200 - SMALL_WINDOW - SMALL_QUEUE)
        back = yield self.client(service, "lagger", flags=PERSISTENT)
        yield back.until(lambda: len(back.publishes) >= SMALL_WINDOW + SMALL_QUEUE, reactor)
        return [int(p[1]) for p in back.publishes]

    @inlineCallbacks
    def test_drop_new(self):
        """drop_new keeps the oldest: the window (resent) and the queue that followed it."""
        got = yield self.comeback("drop_new")
        self.assertEqual(got, list(range(SMALL_WINDOW + SMALL_QUEUE)))

    @inlineCallbacks
    def test_drop_oldest(self):
        """drop_oldest keeps the window (resent) and the newest messages."""
        got = yield self.comeback("drop_oldest")
        self.assertEqual(got, list(range(SMALL_WINDOW)) + list(range(200 - SMALL_QUEUE, 200)))
