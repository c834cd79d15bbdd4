"""A new subscription's retained messages go out as the client takes them, driven by
StringTransport and task.Clock: a ``#`` over thousands of retained topics is neither one
write of all of them nor dropped past the session's queue bound."""

from __future__ import annotations

import asyncio

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.connection import TURN_LIMIT
from gateway.broker.core import GatewayBroker
from gateway.mqtt import packets
from tests.broker import packets as rawpackets
from tests.broker.test_durable_ack import CONFIG, attached

PAYLOAD = b"x" * 1000
#: Retained topics: about five turns' worth of bytes, far more messages than the queue holds.
TOPICS = 5 * TURN_LIMIT // len(PAYLOAD)
QUEUE = 100  # max_queued_messages
WINDOW = 10  # max_inflight_messages


class RetainedBurstTests(SynchronousTestCase):
    """One subscriber of ``#`` over :data:`TOPICS` retained messages, a queue of :data:`QUEUE`."""

    def setUp(self) -> None:
        self.clock = Clock()
        loop = asyncio.new_event_loop()  # amqtt's plugin manager wants one; nothing runs on it here
        self.addCleanup(loop.close)
        self.broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), self.clock,
                                    max_queued_messages=QUEUE, max_queued_bytes=1 << 30, max_inflight=WINDOW)
        self.topics = [f"r/{n:06d}" for n in range(TOPICS)]
        for topic in self.topics:
            self.broker.retain_now(topic, PAYLOAD, 0)
        self.handler, self.transport = attached(self.broker, "sub", self.clock)
        self.handler.connection.framer.feed(packets.connect("sub", 30, True))  # (as after its CONNECT)

    def test_burst_is_paced_and_complete(self) -> None:
        """Each write to the socket (one per reactor turn) holds at most TURN_LIMIT bytes and
        one message; every retained message comes, in order, none dropped, and a message
        published meanwhile comes after them."""
        writes: list[int] = []
        write = self.transport.write
        self.transport.write = lambda data: (writes.append(len(data)), write(data))  # type: ignore[method-assign]
        self.handler.connection.dataReceived(rawpackets.subscribe(("#", 0)))
        self.broker.publish_internal("live/1", b"new", 0, False)
        self.clock.advance(0)
        message = len(packets.publish(self.topics[0], PAYLOAD, 0, True))
        self.assertLessEqual(max(writes), TURN_LIMIT + message)
        self.assertGreater(len(writes), 4)
        parsed, rest = rawpackets.split(self.transport.value())
        self.assertEqual(rest, b"")
        publishes = [rawpackets.parse_publish(first, body)[0] for first, body in parsed if first >> 4 == 3]
        self.assertEqual(publishes, self.topics + ["live/1"])
        self.assertEqual(self.broker.queue_policy.dropped, [0, 0, 0])

    def test_qos1_burst_waits_for_the_window(self) -> None:
        """QoS 1 retained messages past the window and the queue wait for PUBACKs instead of
        being dropped: each PUBACK lets the next one go."""
        for n in range(3 * QUEUE):
            self.broker.retain_now(f"q/{n:04d}", b"%d" % n, 1)
        self.handler.connection.dataReceived(rawpackets.subscribe(("q/#", 1)))
        got: list[str] = []
        for _ in range(10 * QUEUE):
            self.clock.advance(0)
            parsed, _ = rawpackets.split(self.transport.value())
            self.transport.clear()
            sent = [rawpackets.parse_publish(first, body) for first, body in parsed if first >> 4 == 3]
            if not sent and len(got) == 3 * QUEUE:
                break
            self.assertLessEqual(len(self.handler.session.inflight_out), WINDOW)
            got += [topic for topic, *_ in sent]
            for _, _, _, packet_id, _, _ in sent:
                self.handler.connection.dataReceived(packets.ack(packets.PUBACK, packet_id or 0))
        self.assertEqual(got, [f"q/{n:04d}" for n in range(3 * QUEUE)])
        self.assertEqual(self.broker.queue_policy.dropped, [0, 0, 0])

    def test_one_large_write_fills_the_turn(self) -> None:
        """A first write past TURN_LIMIT on its own makes the connection full for that turn:
        the next delivery waits in the queue and goes in the next write."""
        writes: list[int] = []
        write = self.transport.write
        self.transport.write = lambda data: (writes.append(len(data)), write(data))  # type: ignore[method-assign]
        self.handler.deliver("big", b"b" * (TURN_LIMIT + 1), 0, False)
        self.handler.deliver("small", b"s", 0, False)
        self.assertEqual(len(self.handler.outbox), 1)
        self.clock.advance(0)
        self.assertEqual(writes, [len(packets.publish("big", b"b" * (TURN_LIMIT + 1), 0)),
                                  len(packets.publish("small", b"s", 0))])
