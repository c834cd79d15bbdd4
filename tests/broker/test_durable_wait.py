"""docs/broker.md (A publisher that does not wait): the bound on what one client has waiting
in the broker's memory counts its QoS 0 PUBLISHes waiting for the disk and its PUBLISHes
waiting for the topic plugins, as it counts its acknowledgements waiting for the disk.

On a StringTransport, with a journal stream whose batches the test releases by hand
(:class:`~tests.journal.helpers.ManualRunner`), plugin answers the test gives, and task.Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.bus import BusMessage
from gateway.broker.durable_ack import DURABLE_WAIT_BYTES, DURABLE_WAIT_LIMIT
from gateway.journal.record import Record
from gateway.mqtt import packets
from tests.broker.test_durable_ack import PluginsDecideCase, attached, make_broker
from tests.journal.helpers import ManualRunner, open_stream
from tests.journal.powercut import PowerCutFiles


def qos0(first: int, count: int, payload: bytes = b"21.5", prefix: str = "telemetry") -> bytes:
    """``count`` QoS 0 PUBLISHes to ``<prefix>/<n>``, ``n`` from ``first``."""
    return b"".join(packets.publish(f"{prefix}/{n}", payload, 0) for n in range(first, first + count))


class QoS0DurableWaitTests(SynchronousTestCase):
    """QoS 0 PUBLISHes routed to a durable stream (a link's journal) wait in memory until the
    disk has them: a client flooding QoS 0 on a stalled disk is held back by not reading it,
    and nothing it sent is dropped or reordered."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.runner = ManualRunner()
        self.stream = open_stream(PowerCutFiles(), clock=self.clock, run=self.runner)
        self.runner.drain()
        self.broker = make_broker(self, self.clock)
        self.journaled: list[str] = []
        self.broker.durable_gate.install(self.persist_many, lambda topic: topic.startswith("telemetry/"))
        self.handler, self.transport = attached(self.broker, "device", self.clock)
        self.handler.connection.framer.feed(packets.connect("device", 30, True))

    def persist_many(self, messages: Any, on_durable: Any, on_failed: Any, *, reserved: bool = False) -> bool:
        """The links' hook on one stream: QoS 0 batches are told when they are durable too."""
        self.journaled.extend(topic for topic, _, _, _ in messages)
        self.stream.append_many([Record(topic, payload, qos, retain, self.clock.seconds())
                                 for topic, payload, qos, retain in messages], on_durable, on_failed)
        return True

    def durable(self, batches: int = 1) -> None:
        """End the turn (the stream hands its batch over), write ``batches`` batches, end the
        turn (the broker reads again)."""
        self.clock.advance(0)
        for _ in range(batches):
            self.runner.step()
        self.clock.advance(0)

    def test_reading_stops_past_the_limit_of_qos0_messages_waiting_for_the_disk(self) -> None:
        """More QoS 0 PUBLISHes to a journaled topic than DURABLE_WAIT_LIMIT in one read, the
        disk not done with any: the broker stops reading from the client (counted in
        durable_holds), reads again once they are durable, and has journaled each once, in order."""
        total = DURABLE_WAIT_LIMIT + 1
        self.handler.connection.dataReceived(qos0(1, total))
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.broker.durable_gate.holds, 1)
        self.durable()
        self.assertEqual(self.transport.producerState, "producing")
        self.handler.connection.dataReceived(qos0(total + 1, 1))
        self.assertEqual(self.journaled, [f"telemetry/{n}" for n in range(1, total + 2)])
        self.assertEqual(self.transport.value(), b"")  # (QoS 0: nothing to acknowledge)

    def test_reading_resumes_only_at_half_the_limit(self) -> None:
        """Reading stopped for QoS 0 messages waiting for the disk starts again only once they
        are down to half of DURABLE_WAIT_LIMIT, not as soon as some are durable."""
        early = DURABLE_WAIT_LIMIT // 2 - 1
        self.handler.connection.dataReceived(qos0(1, early))
        self.clock.advance(0)  # one batch...
        self.handler.connection.dataReceived(qos0(early + 1, DURABLE_WAIT_LIMIT + 1 - early))  # ...and one past it
        self.assertEqual(self.transport.producerState, "paused")
        self.durable()  # the first is durable: DURABLE_WAIT_LIMIT // 2 + 2 still wait
        self.assertEqual(self.transport.producerState, "paused")
        self.durable()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.broker.durable_gate.holds, 1)

    def test_reading_stops_past_the_bytes_of_qos0_messages_waiting(self) -> None:
        """Large QoS 0 messages stop reading past DURABLE_WAIT_BYTES of payload waiting for
        the disk, whatever their number; reading starts again once they are durable."""
        payload = b"x" * 1_000_000
        count = DURABLE_WAIT_BYTES // len(payload)
        self.handler.connection.dataReceived(qos0(1, count, payload))
        self.assertEqual(self.transport.producerState, "producing")
        self.handler.connection.dataReceived(qos0(count + 1, 1, payload))
        self.assertEqual(self.transport.producerState, "paused")
        self.durable(batches=2)
        self.assertEqual(self.transport.producerState, "producing")

    def test_acknowledgements_and_qos0_messages_count_together(self) -> None:
        """A client's QoS 1 acknowledgements and QoS 0 messages waiting for the disk are one
        count: half the limit of each, and one more, stop reading."""
        half = DURABLE_WAIT_LIMIT // 2
        self.handler.connection.dataReceived(b"".join(packets.publish(f"telemetry/q{n}", b"1", 1, False, n)
                                                      for n in range(1, half + 1)))
        self.handler.connection.dataReceived(qos0(1, half))
        self.assertEqual(self.transport.producerState, "producing")
        self.handler.connection.dataReceived(qos0(half + 1, 1))
        self.assertEqual(self.transport.producerState, "paused")
        self.durable()
        self.assertEqual(self.transport.producerState, "producing")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"".join(packets.ack(packets.PUBACK, n) for n in range(1, half + 1)))

    def test_other_clients_are_read_while_one_is_held(self) -> None:
        """One client held for its QoS 0 flood does not hold another: the other's PUBLISHes
        are read, journaled and acknowledged as the disk makes them durable, and a subscriber
        gets the messages the held client sent before it was held."""
        got: list[str] = []
        self.broker.bus.subscribe("local/#", lambda message: got.append(message.topic))
        other, other_transport = attached(self.broker, "other", self.clock)
        other.connection.framer.feed(packets.connect("other", 30, True))
        self.handler.connection.dataReceived(qos0(1, 2) + qos0(1, DURABLE_WAIT_LIMIT, prefix="local")
                                             + qos0(3, DURABLE_WAIT_LIMIT))
        self.assertEqual(self.transport.producerState, "paused")
        other.connection.dataReceived(packets.publish("telemetry/other", b"1", 1, False, 5) + qos0(1, 1, prefix="local"))
        self.assertEqual(other_transport.producerState, "producing")
        self.assertEqual(self.journaled[-1], "telemetry/other")
        self.assertEqual(got, [f"local/{n}" for n in range(1, DURABLE_WAIT_LIMIT + 1)] + ["local/1"])
        self.durable()
        self.assertEqual(other_transport.value(), packets.ack(packets.PUBACK, 5))


class SlowTopicPluginTests(PluginsDecideCase):
    """PUBLISHes waiting for a slow topic plugin (a user's own plugin may take long) wait in
    memory undecided: past the bound the broker stops reading that client, reads it again at
    half, and routes every PUBLISH once, in order."""

    def setUp(self) -> None:
        super().setUp()
        self.routed: list[BusMessage] = []
        self.broker.bus.subscribe("#", self.routed.append)

    def decide(self, count: int | None = None) -> None:
        """The plugin allows the oldest ``count`` PUBLISHes still undecided (``None``: all,
        also those read meanwhile); end the turn."""
        while self.decisions and (count is None or count > 0):
            self.decisions.pop(0).callback(True)
            count = None if count is None else count - 1
        self.clock.advance(0)

    def test_reading_stops_past_the_limit_of_undecided_publishes(self) -> None:
        """More PUBLISHes than DURABLE_WAIT_LIMIT in one read, the plugin answering none: the
        broker stops reading at the first past the limit (counted in durable_holds; the rest
        of the read waits, unhandled), reads again once half are decided, and routes every
        message once, in order (QoS 1 ones acknowledged in order)."""
        total = DURABLE_WAIT_LIMIT + 10
        self.handler.connection.dataReceived(packets.publish("local/0", b"q", 1, False, 1) + qos0(1, total - 1, prefix="local"))
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.broker.durable_gate.holds, 1)
        self.decide(DURABLE_WAIT_LIMIT // 2)
        self.assertEqual(self.transport.producerState, "paused")
        self.decide(1)
        self.assertEqual(self.transport.producerState, "producing")
        self.decide()
        self.assertEqual([message.topic for message in self.routed], [f"local/{n}" for n in range(total)])
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 1))
        self.assertEqual(self.broker.durable_gate.holds, 1)

    def test_reading_stops_past_the_bytes_of_undecided_publishes(self) -> None:
        """Large PUBLISHes waiting for the plugin stop reading past DURABLE_WAIT_BYTES of
        payload, whatever their number."""
        payload = b"x" * 1_000_000
        count = DURABLE_WAIT_BYTES // len(payload)
        self.handler.connection.dataReceived(qos0(1, count, payload, prefix="local"))
        self.assertEqual(self.transport.producerState, "producing")
        self.handler.connection.dataReceived(qos0(count + 1, 1, payload, prefix="local"))
        self.assertEqual(self.transport.producerState, "paused")
        self.decide()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(self.routed), count + 1)

    def test_another_client_is_read_while_one_waits_for_the_plugin(self) -> None:
        """One client held for its PUBLISHes waiting for the plugin does not hold another."""
        self.handler.connection.dataReceived(qos0(1, DURABLE_WAIT_LIMIT + 1, prefix="local"))
        self.assertEqual(self.transport.producerState, "paused")
        other, other_transport = attached(self.broker, "other", self.clock)
        other.connection.framer.feed(packets.connect("other", 30, True))
        other.connection.dataReceived(packets.publish("local/other", b"1", 1, False, 3))
        self.assertEqual(other_transport.producerState, "producing")
        self.decisions.pop().callback(True)  # (the other's; each client's PUBLISHes are asked about in turn)
        self.clock.advance(0)
        self.assertEqual(other_transport.value(), packets.ack(packets.PUBACK, 3))
        self.assertEqual(self.routed[-1].topic, "local/other")
