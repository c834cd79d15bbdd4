"""PUBACK only after the append is durable: the durable-ack handler on a StringTransport,
a journal stream whose batches are released by hand, and task.Clock (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.session import Session
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.amqtt_broker import GatewayBroker
from gateway.broker.bus import LocalBus
from gateway.broker.durable_ack import DurableAckHandler, DurableGate
from gateway.broker.statelog import StateLog
from gateway.journal.record import Record
from gateway.mqtt import packets
from gateway.mqtt.framing import PacketFramer
from tests.journal.helpers import ManualRunner, open_stream
from tests.journal.powercut import PowerCutFiles


class FakeBroker:
    """The broker as the handler sees it: routes nothing, asks for the acknowledgement at once."""

    max_packet_size = 1 << 20
    max_inflight = 10
    fast_path = True

    def __init__(self, state_log: StateLog | None = None) -> None:
        self.state_log = state_log
        self.durable_gate = DurableGate()
        self.messages_in = [0, 0, 0]
        self.messages_out = [0, 0, 0]
        self.payload_bytes_in = 0
        self.payload_bytes_out = 0
        self.dollar_publishes_dropped = 0

    def publish_from_client(self, handler: DurableAckHandler, message: Any) -> None:
        if message.retain and self.state_log is not None:  # what GatewayBroker.retain_now logs
            self.state_log.retained(message.topic, bytes(message.data), message.qos)
        if message.qos:
            handler.acknowledge(message)


class Writer:
    """amqtt's writer, straight onto the transport."""

    paused = False

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)


class Connection:
    """The Twisted connection as the handler sees it."""

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport


class DurableAckTests(SynchronousTestCase):
    """[the gateway's promise] a client's QoS 1/2 PUBLISH is acknowledged only once the
    journal holds it durably, and never when the journal failed to."""

    with_state_log = False

    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.clock = Clock()
        self.files, self.runner = PowerCutFiles(), ManualRunner()
        self.stream = open_stream(self.files, clock=self.clock, run=self.runner)
        self.runner.drain()
        self.state_runner = ManualRunner()
        self.state_stream = open_stream(self.files, clock=self.clock, run=self.state_runner, directory="/j/state")
        self.state_runner.drain()
        self.state_log = StateLog(self.state_stream, self.clock)
        broker = FakeBroker(self.state_log if self.with_state_log else None)
        broker.durable_gate.install(lambda *a: None, lambda topic: topic.startswith("telemetry/"), self.persist_then)
        self.transport = StringTransport()
        self.handler = DurableAckHandler(None, Session(), self.loop)  # type: ignore[arg-type]
        self.handler.broker = broker  # type: ignore[assignment]
        self.handler.writer = Writer(self.transport)  # type: ignore[assignment]
        self.handler.connection = Connection(self.transport)
        self.handler.live = True
        self.framer = PacketFramer(1 << 20)
        self.framer.feed(packets.connect("device", 30, True))

    def persist_then(self, topic: str, payload: bytes, qos: int, retain: bool,
                     on_durable: Any, on_failed: Any) -> bool:
        self.stream.append_then(Record(topic, payload, qos, retain, self.clock.seconds()), on_durable, on_failed)
        return bool(qos)

    def publish(self, topic: str, qos: int, packet_id: int, retain: bool = False) -> None:
        for packet in self.framer.feed(packets.publish(topic, b"21.5", qos, retain, packet_id)):
            self.handler.packet_received(packet)

    def turn(self) -> None:
        """End a reactor turn: the clock's calls (the stream's batch) and the loop's (the acks)."""
        self.clock.advance(0)
        self.loop.run_until_complete(asyncio.sleep(0))

    def test_puback_waits_for_fsync(self) -> None:
        """No PUBACK while the batch is written; PUBACK once the I/O thread says it is durable."""
        self.publish("telemetry/t", 1, 7)
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len(self.runner.jobs), 1)  # the batch, handed over, not yet written
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 7))
        self.assertEqual(self.stream.written_seq, 1)

    def test_pubrec_waits_too_and_acks_keep_arrival_order(self) -> None:
        """QoS 2 gets PUBREC after the append; an unpersisted topic does not jump the queue."""
        self.publish("telemetry/a", 2, 1)
        self.publish("local/b", 1, 2)  # not persisted: ready at once, but sent after 1
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 1) + packets.ack(packets.PUBACK, 2))

    def test_failed_append_is_never_acknowledged(self) -> None:
        """A write that fails (disk full) closes the connection without a PUBACK."""
        self.publish("telemetry/t", 1, 9)
        self.turn()
        self.files.capacity = self.files.used()
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.handler.gate.failures, 1)
        self.flushLoggedErrors()


class BrokerStateDurableAckTests(DurableAckTests):
    """[the gateway's promise, broker state] a PUBLISH that changed the broker's state (here a
    retained message) is acknowledged only once the broker's state log holds the change;
    the journal tests above hold with the state log in place."""

    with_state_log = True

    def test_retained_puback_waits_for_the_state_log(self) -> None:
        """A retained QoS 1 message on a topic no link journals: PUBACK once the state batch is fsynced."""
        self.publish("local/r", 1, 3, retain=True)
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len(self.state_runner.jobs), 1)  # the state batch, handed over, not yet written
        self.state_runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 3))
        self.assertEqual(self.state_log.durable, 1)

    def test_waits_for_both_journal_and_state_log(self) -> None:
        """A retained QoS 2 message a link journals: PUBREC only once both appends are durable, in either order."""
        self.publish("telemetry/r", 2, 4, retain=True)
        self.turn()
        self.state_runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 4))

    def test_live_publish_does_not_wait_for_other_state_changes(self) -> None:
        """A PUBLISH that changes no state is acknowledged at once, whatever else the log is writing."""
        self.state_log.retained("other/topic", b"x", 1)  # another client's change, not yet durable
        self.publish("local/live", 1, 5)
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 5))

    def test_acks_keep_arrival_order_across_the_state_log(self) -> None:
        """A live PUBLISH after a retained one waits behind it (§4.6)."""
        self.publish("local/r", 1, 6, retain=True)
        self.publish("local/live", 1, 7)
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.state_runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 6) + packets.ack(packets.PUBACK, 7))

    def test_failed_state_write_is_never_acknowledged(self) -> None:
        """The state log's write fails (disk full): no PUBACK, the connection is closed."""
        self.publish("local/r", 1, 8, retain=True)
        self.turn()
        self.files.capacity = self.files.used()
        self.state_runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.state_log.failures, 1)
        self.flushLoggedErrors()


class GatewayBrokerStateTests(SynchronousTestCase):
    """The same promise through the real :class:`GatewayBroker` routing (not started, no
    sockets): what its ``retain_now`` and ``queue_offline`` log holds the PUBACK back."""

    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.clock = Clock()
        self.files, self.runner = PowerCutFiles(), ManualRunner()
        self.stream = open_stream(self.files, clock=self.clock, run=self.runner, directory="/j/state")
        self.runner.drain()

        async def build() -> tuple[GatewayBroker, Any, Session]:
            # Inside its loop: amqtt's plugin manager and handlers built outside a running
            # loop make and install a loop of their own (the next tests would run on it).
            broker = GatewayBroker({"listeners": {"default": {"type": "external"}}, "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}, self.loop, LocalBus())
            return (broker, *broker.create_offline_session("offline"))

        self.broker, handler, self.offline = self.loop.run_until_complete(build())
        self.broker.state_log = StateLog(self.stream, self.clock)
        self.broker.sessions["offline"] = (self.offline, handler)
        self.broker.subscriptions["q/#"] = [(self.offline, 1)]
        self.transport = StringTransport()
        session = Session()
        session.client_id = "publisher"
        self.handler = DurableAckHandler(self.broker.plugins_manager, session, self.loop)
        self.handler.broker = self.broker
        self.handler.writer = Writer(self.transport)  # type: ignore[assignment]
        self.handler.connection = Connection(self.transport)
        self.handler.live = True
        self.framer = PacketFramer(1 << 20)
        self.framer.feed(packets.connect("publisher", 30, True))

    def publish(self, topic: str, qos: int, packet_id: int, retain: bool = False) -> None:
        for packet in self.framer.feed(packets.publish(topic, b"v", qos, retain, packet_id)):
            self.handler.packet_received(packet)

    def turn(self) -> None:
        self.clock.advance(0)
        self.loop.run_until_complete(asyncio.sleep(0))

    def test_queued_for_offline_session(self) -> None:
        """A QoS 1 message queued for an offline persistent session: PUBACK after the state fsync."""
        self.publish("q/1", 1, 1)
        self.turn()
        self.assertEqual(len(self.broker.outbox_for(self.offline)), 1)
        self.assertEqual(self.transport.value(), b"")
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 1))

    def test_retained(self) -> None:
        """A retained QoS 2 message: PUBREC after the state fsync."""
        self.publish("r/1", 2, 2, retain=True)
        self.turn()
        self.assertIn("r/1", self.broker.retained_messages)
        self.assertEqual(self.transport.value(), b"")
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 2))

    def test_no_state_change_no_wait(self) -> None:
        """A QoS 1 message no persistent session queues: PUBACK at once, nothing appended."""
        self.publish("live/1", 1, 3)
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 3))
        self.assertEqual(self.runner.jobs, [])
