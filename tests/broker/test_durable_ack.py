"""PUBACK only after the append is durable: the durable-ack handler on a StringTransport,
a journal stream whose batches are released by hand, and task.Clock (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import BusMessage, LocalBus
from gateway.broker.clientsession import ClientSession
from gateway.broker.connection import VIOLATION_LOG_INTERVAL, MQTTListenerFactory
from gateway.broker.core import GatewayBroker
from gateway.broker.durable_ack import DURABLE_WAIT_BYTES, DURABLE_WAIT_LIMIT, DurableAckHandler
from gateway.broker.persistence import checkpoint_content
from gateway.broker.statelog import StateLog
from gateway.journal.record import Record
from gateway.journal.settings import StreamSettings
from gateway.mqtt import packets
from gateway.mqtt.framing import PacketFramer
from tests.journal.helpers import ManualRunner, open_stream
from tests.journal.powercut import PowerCutFiles


#: amqtt's part of the broker config: anonymous clients, no topic plugins (the fast path).
CONFIG = {"listeners": {"default": {"type": "external"}},
          "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}


def make_broker(test: SynchronousTestCase, clock: Clock) -> GatewayBroker:
    """A real, unstarted :class:`GatewayBroker` on ``clock`` (no sockets)."""
    loop = asyncio.new_event_loop()  # amqtt's plugin manager wants one; nothing runs on it here
    test.addCleanup(loop.close)
    return GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), clock)


def attached(broker: GatewayBroker, client_id: str, clock: Clock, session: ClientSession | None = None,
             factory: MQTTListenerFactory | None = None) -> tuple[DurableAckHandler, StringTransport]:
    """A connected client ``client_id``: a real :class:`MQTTConnection` on a StringTransport,
    with its accepted session's :class:`DurableAckHandler`, as the broker makes them after
    CONNACK (a new clean session, or ``session`` resumed), on ``factory``'s listener (else a new one)."""
    if factory is None:
        factory = MQTTListenerFactory("default", broker, clock, 1 << 20, 10.0)
    connection = factory.buildProtocol(None)
    assert connection is not None
    transport = StringTransport()
    connection.makeConnection(transport)
    if session is None:
        session = broker.sessions[client_id] = ClientSession(client_id, clean=True)
    handler = DurableAckHandler(broker, session, connection)
    broker.live[client_id] = handler
    handler.start()
    return handler, transport


class DurableAckTests(SynchronousTestCase):
    """[the gateway's promise] a client's QoS 1/2 PUBLISH is acknowledged only once the
    journal holds it durably, and never when the journal failed to."""

    with_state_log = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.files, self.runner = PowerCutFiles(), ManualRunner()
        self.stream = open_stream(self.files, clock=self.clock, run=self.runner)
        self.runner.drain()
        self.state_runner = ManualRunner()
        self.state_stream = open_stream(self.files, clock=self.clock, run=self.state_runner, directory="/j/state")
        self.state_runner.drain()
        self.state_log = StateLog(self.state_stream, self.clock)
        self.broker = make_broker(self, self.clock)
        self.broker.state_log = self.state_log if self.with_state_log else None
        self.hook_calls: list[list[Any]] = []
        self.broker.durable_gate.install(self.persist_many, lambda topic: topic.startswith("telemetry/"))
        self.handler, self.transport = attached(self.broker, "device", self.clock)
        self.framer = PacketFramer(1 << 20)
        self.framer.feed(packets.connect("device", 30, True))
        # The connection's framer has not seen this client's CONNECT (the test attached it):
        # let it count one, as after a real CONNECT (for :meth:`receive`).
        self.handler.connection.framer.feed(packets.connect("device", 30, True))

    def persist_many(self, messages: Any, on_durable: Any, on_failed: Any, *, reserved: bool = False) -> bool:
        self.hook_calls.append(list(messages))
        self.stream.append_many([Record(topic, payload, qos, retain, self.clock.seconds())
                                 for topic, payload, qos, retain in messages], on_durable, on_failed)
        return True  # (QoS 0 batches too: the broker counts them until they are durable)

    def publish(self, topic: str, qos: int, packet_id: int, retain: bool = False) -> None:
        """One read carrying one PUBLISH, handed over as the connection does."""
        self.read(packets.publish(topic, b"21.5", qos, retain, packet_id))

    def read(self, data: bytes) -> None:
        """Hand the packets of one socket read to the handler, then say they are done."""
        for packet in self.framer.feed(data):
            self.handler.packet_received(packet)
        self.handler.packets_done()

    def turn(self) -> None:
        """End a reactor turn: the clock's calls (the stream's batch, then the acks)."""
        self.clock.advance(0)
        self.clock.advance(0)

    def receive(self, data: bytes) -> None:
        """One socket read through the client's connection: framing and its violations too."""
        self.handler.connection.dataReceived(data)

    def test_a_violation_closes_after_the_acks_of_the_publishes_before_it(self) -> None:
        """docs/configuration.md (Bad clients): QoS 1 and 2 PUBLISHes, then a packet that
        breaks the protocol, in one read: reading stops, the appends go on, their PUBACK and
        PUBREC leave once they are durable (with the PUBACK of a topic not journaled, which
        waits behind them), and only then is the connection closed, in order."""
        self.receive(packets.publish("telemetry/t", b"1", 1, False, 7) + packets.publish("telemetry/t", b"2", 2, False, 8)
                     + packets.publish("local/x", b"3", 1, False, 9) + b"\xf0\x00" + packets.PINGREQ_PACKET)
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.handler.connection.factory.violations, 1)
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 7) + packets.ack(packets.PUBREC, 8)
                         + packets.ack(packets.PUBACK, 9))
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected, "reset")

    def test_a_violation_waits_for_the_journal_no_longer_than_connect_timeout(self) -> None:
        """The journal does not make the PUBLISH before the violation durable within the
        listener's connect_timeout (10 s here; its sweep looks every second): the connection
        is closed in order without its PUBACK (the client sends the PUBLISH again), and
        nothing is sent when the append completes later."""
        self.receive(packets.publish("telemetry/t", b"1", 1, False, 7) + b"\xf0\x00")
        self.turn()
        self.clock.advance(9.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected, "reset")
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"")

    def test_a_failed_append_after_a_violation_is_not_acknowledged(self) -> None:
        """The append of the PUBLISH before the violation fails: no PUBACK, the connection
        is closed at once, as for a failed append without a violation."""
        self.receive(packets.publish("telemetry/t", b"1", 1, False, 7) + b"\xf0\x00")
        self.turn()
        self.files.capacity = self.files.used()
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnected)
        self.flushLoggedErrors()

    def test_a_violation_after_a_publish_not_journaled_closes_at_once(self) -> None:
        """A QoS 1 PUBLISH on a topic no link journals, then a violation: its PUBACK and the
        close in order come at once, as they always did."""
        self.receive(packets.publish("local/x", b"1", 1, False, 7) + b"\xf0\x00")
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 7))
        self.assertTrue(self.transport.disconnecting)

    def test_a_wrong_kind_of_ack_closes_after_the_acks_of_the_publishes_before_it(self) -> None:
        """A QoS 1 delivery answered with PUBREC [MQTT-4.3.2-2] after a QoS 1 PUBLISH, in
        one read: the PUBLISH's PUBACK leaves once it is durable, then the connection is
        closed; nothing after the PUBREC is handled (no PUBREL, no PINGRESP)."""
        self.handler.deliver("local/x", b"m", 1, False)
        self.turn()
        self.transport.clear()
        self.receive(packets.publish("telemetry/t", b"1", 1, False, 7) + packets.ack(packets.PUBREC, 1)
                     + packets.PINGREQ_PACKET)
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 7))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(list(self.handler.session.inflight_out), [1])

    def test_stopping_the_broker_while_a_violation_waits_for_the_journal(self) -> None:
        """The broker shuts down (SIGTERM) while a connection closed for a violation waits
        for the journal: it is closed at once, in order (what was written goes first; it is
        aborted only if its client does not read it within the stop's grace), and nothing is
        sent later."""
        self.receive(packets.publish("telemetry/t", b"1", 1, False, 7) + b"\xf0\x00")
        self.turn()
        self.broker.shutdown()
        self.assertTrue(self.transport.disconnecting)
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"")

    def connecting(self, data: bytes) -> tuple[list[Deferred[bool]], StringTransport, MQTTListenerFactory]:
        """A new client whose CONNECT, first in ``data`` (one socket read), waits for the
        authentication plugins: their answers, to be released by the test."""
        answers: list[Deferred[bool]] = []

        def authenticate(view: Any) -> Deferred[bool]:
            answers.append(Deferred())
            return answers[-1]

        self.patch(self.broker.plugins, "authenticate", authenticate)
        factory = MQTTListenerFactory("default", self.broker, self.clock, 1 << 20, 10.0)
        connection = factory.buildProtocol(None)
        assert connection is not None
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(data)
        self.turn()
        return answers, transport, factory

    #: CONNECT, QoS 1 (journaled), QoS 2 and QoS 1 (not journaled) PUBLISHes, then a packet
    #: that breaks the protocol and a PINGREQ after it, in one read.
    CONNECT_AND_VIOLATION = (packets.connect("sensor", 30, True) + packets.publish("telemetry/t", b"1", 1, False, 7)
                             + packets.publish("local/x", b"2", 2, False, 8) + packets.publish("local/x", b"3", 1, False, 9)
                             + b"\xf0\x00" + packets.PINGREQ_PACKET)

    def test_a_violation_while_the_connect_is_authenticated_closes_after_the_answers(self) -> None:
        """docs/configuration.md (Bad clients): a client sends CONNECT, PUBLISHes and a bad
        packet before its CONNECT is authenticated: the connection stays open, reading
        nothing more, until the plugins accept; then the CONNACK and the answers to the
        PUBLISHes (the journaled one's once it is durable) leave, then the close, in order.
        Nothing after the bad packet is handled (no PINGRESP)."""
        answers, transport, factory = self.connecting(self.CONNECT_AND_VIOLATION)
        self.assertEqual(factory.violations, 1)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.producerState, "paused")
        answers[0].callback(True)
        self.turn()
        self.assertEqual(transport.value(), packets.connack(False, 0))
        self.assertFalse(transport.disconnecting)
        self.runner.step()
        self.turn()
        self.assertEqual(transport.value(), packets.connack(False, 0) + packets.ack(packets.PUBACK, 7)
                         + packets.ack(packets.PUBREC, 8) + packets.ack(packets.PUBACK, 9))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected, "reset")
        self.assertEqual(transport.producerState, "producing")  # (reads on, drops: no reset for unread bytes)
        self.assertEqual([message[0] for message in self.hook_calls[0]], ["telemetry/t"])

    def test_a_violation_while_the_connect_is_refused_gets_the_refusal_only(self) -> None:
        """The plugins refuse the CONNECT of a client that broke the protocol while it was
        being authenticated: CONNACK 5, then the close; none of its PUBLISHes is handled."""
        answers, transport, factory = self.connecting(self.CONNECT_AND_VIOLATION)
        answers[0].callback(False)
        self.turn()
        self.assertEqual(transport.value(), packets.connack(False, 5))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.hook_calls, [])
        self.assertNotIn("sensor", self.broker.live)

    def test_a_violation_while_the_connect_is_never_decided(self) -> None:
        """The plugins do not answer within connect_timeout (10 s here): the connection is
        aborted as any whose CONNECT was not decided in time, and a late answer starts nothing."""
        answers, transport, factory = self.connecting(self.CONNECT_AND_VIOLATION)
        self.clock.advance(11)
        self.assertTrue(transport.disconnected)
        answers[0].callback(True)
        self.turn()
        self.assertEqual(transport.value(), b"")
        self.assertNotIn("sensor", self.broker.live)

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

    def test_one_read_is_one_append_call(self) -> None:
        """The PUBLISHes of one read reach the hook in one call, in order, and their PUBACKs
        leave together, in arrival order, once that batch is durable."""
        self.read(b"".join(packets.publish("telemetry/t", b"%d" % i, 1, False, 10 + i) for i in range(3))
                  + packets.publish("local/x", b"n", 1, False, 13))
        self.assertEqual(self.hook_calls, [[("telemetry/t", b"%d" % i, 1, False) for i in range(3)]])
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"".join(packets.ack(packets.PUBACK, 10 + i) for i in range(4)))
        self.assertEqual(self.stream.written_seq, 3)

    def test_each_read_is_its_own_batch(self) -> None:
        """A second read's PUBLISH is a second hook call; its PUBACK waits behind the first's."""
        self.publish("telemetry/a", 1, 1)
        self.publish("telemetry/b", 1, 2)
        self.assertEqual(len(self.hook_calls), 2)
        self.turn()
        self.runner.step()  # both appends joined one batch on the stream
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 1) + packets.ack(packets.PUBACK, 2))

    def test_one_group_commit_acknowledges_every_client_on_one_timer(self) -> None:
        """The PUBLISHes of two clients made durable by one group commit: their PUBACKs
        leave at the end of that turn, each client's in arrival order, scheduled by one call
        for both (not one timer per client: stop 64, docs/benchmarks.md)."""
        other, other_transport = attached(self.broker, "other", self.clock)
        other_framer = PacketFramer(1 << 20)
        other_framer.feed(packets.connect("other", 30, True))
        other.connection.framer.feed(packets.connect("other", 30, True))
        self.publish("telemetry/a", 1, 1)
        for packet in other_framer.feed(packets.publish("telemetry/b", b"1", 1, False, 5)
                                        + packets.publish("telemetry/b", b"2", 1, False, 6)):
            other.packet_received(packet)
        other.packets_done()
        self.publish("telemetry/a", 1, 2)
        self.turn()
        self.assertEqual(len(self.runner.jobs), 1)  # one batch for the three reads
        now = self.clock.seconds()
        before = [c for c in self.clock.getDelayedCalls() if c.getTime() <= now]
        self.runner.step()
        due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= now and c not in before]
        self.assertEqual(len(due), 1)
        self.assertEqual((self.transport.value(), other_transport.value()), (b"", b""))
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 1) + packets.ack(packets.PUBACK, 2))
        self.assertEqual(other_transport.value(), packets.ack(packets.PUBACK, 5) + packets.ack(packets.PUBACK, 6))

    def test_one_clients_failing_flush_does_not_hold_the_others(self) -> None:
        """Flushes asked for in the same turn run in order at its end; one that raises is
        logged, and the ones after it still run."""
        gate, ran = self.broker.durable_gate, []

        def broken() -> None:
            ran.append("broken")
            raise RuntimeError("broken handler")
        gate.flush_soon(broken, self.clock)
        gate.flush_soon(lambda: ran.append("second"), self.clock)
        with capturedLogs() as events:
            self.clock.advance(0)
        self.assertEqual(ran, ["broken", "second"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("sending acknowledgements failed", [formatEvent(e) for e in events])
        gate.flush_soon(lambda: ran.append("next turn"), self.clock)
        self.clock.advance(0)
        self.assertEqual(ran[-1], "next turn")

    def publishes(self, first: int, count: int, payload: bytes = b"21.5") -> bytes:
        """``count`` QoS 1 PUBLISHes to a journaled topic, packet ids from ``first``, each
        naming its id in the topic."""
        return b"".join(packets.publish(f"telemetry/{i}", payload, 1, False, i) for i in range(first, first + count))

    def journaled(self) -> list[str]:
        """The topics handed to the journal so far, in order."""
        return [topic for call in self.hook_calls for topic, _, _, _ in call]

    def pubacks(self, first: int, count: int) -> bytes:
        return b"".join(packets.ack(packets.PUBACK, i) for i in range(first, first + count))

    def test_reading_stops_past_the_limit_of_waiting_acks_and_loses_nothing(self) -> None:
        """docs/broker.md (A publisher that does not wait): a client sends more QoS 1
        PUBLISHes than DURABLE_WAIT_LIMIT in one read, none durable yet: the broker stops
        reading from it at the first past the limit (the rest of that read waits, unhandled),
        reads again once their appends are durable, and every message is journaled and
        acknowledged once, in arrival order."""
        total = DURABLE_WAIT_LIMIT + 50
        self.receive(self.publishes(1, total))
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.journaled(), [f"telemetry/{i}" for i in range(1, DURABLE_WAIT_LIMIT + 2)])
        self.assertEqual(self.handler.gate.holds, 1)
        self.turn()
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.transport.value(), self.pubacks(1, DURABLE_WAIT_LIMIT + 1))
        self.assertEqual(self.journaled(), [f"telemetry/{i}" for i in range(1, total + 1)])
        self.all_durable()
        self.turn()
        self.assertEqual(self.transport.value(), self.pubacks(1, total))
        self.assertEqual(self.stream.written_seq, total)
        self.assertEqual(self.handler.gate.holds, 1)

    def test_reading_resumes_only_at_half_the_limit(self) -> None:
        """Reading stopped past DURABLE_WAIT_LIMIT waiting acknowledgements starts again only
        once they are down to half of it, not as soon as one leaves (the reads would stop and
        start by the message); a client below the limit is never stopped."""
        early = DURABLE_WAIT_LIMIT // 2 - 1
        self.receive(self.publishes(1, early))  # one append...
        self.turn()
        self.receive(self.publishes(early + 1, DURABLE_WAIT_LIMIT - early))  # ...and another: at the limit
        self.assertEqual(self.transport.producerState, "producing")
        self.receive(self.publishes(DURABLE_WAIT_LIMIT + 1, 1))  # one past it
        self.assertEqual(self.transport.producerState, "paused")
        self.receive(self.publishes(DURABLE_WAIT_LIMIT + 2, 1))  # (as the socket buffered it already)
        self.turn()
        self.runner.step()  # the first append is durable: DURABLE_WAIT_LIMIT // 2 + 2 still wait
        self.turn()
        self.assertEqual(self.transport.value(), self.pubacks(1, early))
        self.assertEqual(self.transport.producerState, "paused")
        self.all_durable()
        self.turn()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.transport.value(), self.pubacks(1, DURABLE_WAIT_LIMIT + 1))
        self.assertEqual(self.journaled(), [f"telemetry/{i}" for i in range(1, DURABLE_WAIT_LIMIT + 3)])
        self.all_durable()  # the PUBLISH that came while reading was stopped, handled once it resumed
        self.turn()
        self.assertEqual(self.transport.value(), self.pubacks(1, DURABLE_WAIT_LIMIT + 2))

    def test_reading_stops_past_the_bytes_of_waiting_acks(self) -> None:
        """Large messages stop reading sooner: past DURABLE_WAIT_BYTES of payload waiting,
        whatever their number; reading starts again once they are durable."""
        payload = b"x" * 1_000_000
        count = DURABLE_WAIT_BYTES // len(payload) + 1
        self.receive(self.publishes(1, count - 1, payload))
        self.assertEqual(self.transport.producerState, "producing")
        self.receive(self.publishes(count, 1, payload))
        self.assertEqual(self.transport.producerState, "paused")
        self.all_durable()
        self.turn()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.transport.value(), self.pubacks(1, count))

    def reconnected(self, session: ClientSession) -> PacketFramer:
        """The client's connection drops; it connects again, resuming ``session``: the new
        handler and transport become ``self.handler`` and ``self.transport``."""
        self.handler.connection_lost()
        self.handler, self.transport = attached(self.broker, session.client_id, self.clock, session)
        self.framer = PacketFramer(1 << 20)
        self.framer.feed(packets.connect(session.client_id, 30, False))
        return self.framer

    def all_durable(self) -> None:
        """End the turn, then write every batch handed over: the journal's, then the broker
        state log's (a persistent session's QoS 2 id is logged once its PUBLISH is journaled)."""
        self.turn()
        self.runner.drain()
        self.turn()
        self.state_runner.drain()

    def persistent_device(self) -> ClientSession:
        """Make the connected client's session a persistent one (CleanSession=0)."""
        session = self.handler.session
        session.clean = False
        return session

    def test_qos2_resent_after_reconnect_is_neither_stored_nor_routed_again(self) -> None:
        """§4.3.3, §3.1.2.4: a persistent session's QoS 2 PUBLISH PUBREC'd before the connection
        dropped, resent with DUP and the same id on the next connection, is PUBREC'd again
        without a second journal append or a second local delivery; its PUBREL completes it,
        and the id then carries a new message again."""
        watcher, watched = attached(self.broker, "watcher", self.clock)
        self.broker.subscribe_session(watcher.session, "telemetry/#", 0)
        session = self.persistent_device()
        self.publish("telemetry/t", 2, 5)
        self.all_durable()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 5))
        self.reconnected(session)
        self.read(packets.publish("telemetry/t", b"21.5", 2, False, 5, dup=True))
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 5))
        self.assertEqual(len(self.hook_calls), 1)
        self.assertEqual(watched.value(), packets.publish("telemetry/t", b"21.5", 0))
        self.read(packets.ack(packets.PUBREL, 5))
        self.all_durable()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 5) + packets.ack(packets.PUBCOMP, 5))
        self.publish("telemetry/t", 2, 5)  # a new message under the released id
        self.turn()
        self.assertEqual(len(self.hook_calls), 2)
        self.assertEqual(watched.value(), packets.publish("telemetry/t", b"21.5", 0) * 2)

    def test_qos2_resent_before_pubrel_is_counted_once(self) -> None:
        """A QoS 2 PUBLISH sent again before its PUBREL (the same message, §4.3.3: PUBREC'd
        again, not routed again) was counted again in ``messages_in`` and
        ``payload_bytes_in`` (``gateway_broker_messages_received_total{qos="2"}`` said 2 for
        one message delivered once); a new message under the released id counts."""
        session = self.persistent_device()
        self.publish("telemetry/t", 2, 5)
        self.all_durable()
        self.turn()
        self.reconnected(session)
        self.read(packets.publish("telemetry/t", b"21.5", 2, False, 5, dup=True))
        self.turn()
        self.assertEqual((self.broker.messages_in, self.broker.payload_bytes_in), ([0, 0, 1], 4))
        self.read(packets.ack(packets.PUBREL, 5))
        self.all_durable()
        self.publish("telemetry/t", 2, 5)  # a new message under the released id
        self.turn()
        self.assertEqual((self.broker.messages_in, self.broker.payload_bytes_in), ([0, 0, 2], 8))

    def test_qos2_pubrel_after_reconnect_completes(self) -> None:
        """The client had sent PUBREL before the drop went unanswered: it sends PUBREL again and
        gets PUBCOMP; the message was stored once."""
        session = self.persistent_device()
        self.publish("telemetry/t", 2, 6)
        self.all_durable()
        self.turn()
        self.reconnected(session)
        self.read(packets.ack(packets.PUBREL, 6))
        self.all_durable()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBCOMP, 6))
        self.assertEqual(session.inflight_in, set())
        self.assertEqual(len(self.hook_calls), 1)

    def test_qos2_unacknowledged_at_the_drop_is_taken_as_new(self) -> None:
        """A QoS 2 PUBLISH whose append was not durable when the connection dropped (no PUBREC
        went out) is stored and PUBREC'd when resent: never acknowledged without being stored."""
        session = self.persistent_device()
        self.publish("telemetry/t", 2, 7)
        self.turn()
        self.reconnected(session)
        self.read(packets.publish("telemetry/t", b"21.5", 2, False, 7, dup=True))
        self.turn()
        self.assertEqual(len(self.hook_calls), 2)
        self.all_durable()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 7))

    def test_qos2_whose_append_failed_is_stored_when_resent(self) -> None:
        """The append of a QoS 2 PUBLISH fails (disk full): the connection closes unacknowledged;
        the resend on the next connection goes to the journal again (not PUBREC'd as stored)."""
        session = self.persistent_device()
        self.publish("telemetry/t", 2, 8)
        self.turn()
        self.files.capacity = self.files.used()
        self.runner.step()
        self.turn()
        self.assertTrue(self.transport.disconnecting)
        self.flushLoggedErrors()
        self.reconnected(session)
        self.read(packets.publish("telemetry/t", b"21.5", 2, False, 8, dup=True))
        self.turn()
        self.assertEqual(len(self.hook_calls), 2)
        self.assertEqual(self.transport.value(), b"")

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

    def test_bus_subscribers_get_a_publish_the_journal_refuses(self) -> None:
        """The gateway's services on the bus (the twin) get a client's PUBLISH as it arrives, as
        its other subscribers do: only the PUBACK waits for the journal. A refused append leaves
        the publisher unacknowledged and closed, and the twin has run its command all the same
        (docs/twin.md: the publisher sends it again and finds it made)."""
        seen: list[BusMessage] = []
        self.broker.bus.subscribe("telemetry/#", seen.append)
        self.publish("telemetry/t", 1, 9)
        self.turn()
        self.files.capacity = self.files.used()
        self.runner.step()
        self.turn()
        self.assertEqual(seen, [BusMessage("telemetry/t", b"21.5", 1, False)])
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.flushLoggedErrors()

    def test_a_publish_no_stream_can_hold_is_refused_for_good_in_the_log(self) -> None:
        """A QoS 1 PUBLISH larger than the max_bytes of the stream it is routed to can never be
        stored: no PUBACK (MQTT 3.1.1 has no refusal of a PUBLISH, and a PUBACK says it is
        durable), the connection is closed, and the line says it is for good, not a full disk
        that may pass: the client is closed again each time it sends it (docs/broker.md)."""
        self.stream = open_stream(self.files, StreamSettings(max_bytes=8192), clock=self.clock, run=self.runner,
                                  directory="/j/small")
        self.runner.drain()
        with capturedLogs() as logs:
            self.read(packets.publish("telemetry/t", b"x" * 9000, 1, False, 5))
            self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        lines = [formatEvent(e) for e in logs if "not acknowledging" in formatEvent(e)]
        self.assertEqual(lines, [
            "listener default: not acknowledging telemetry/t from 'device': journal stream 's' refused the append"
            " (max-bytes): a record of 9047 bytes is larger than max_bytes (8192 bytes); it can never be stored"
            " (the client is closed each time it sends it); closing the connection"])
        self.assertEqual(self.handler.connection.factory.violations, 0)

    def test_refusals_are_logged_at_most_once_per_interval(self) -> None:
        """While the disk is full every client's PUBLISH fails and its connection closes: one
        log line per listener per VIOLATION_LOG_INTERVAL, the next one saying how many were
        left out; they are not counted as protocol violations."""
        factory = self.handler.connection.factory
        self.files.capacity = self.files.used()  # the disk is full
        with capturedLogs() as logs:
            for i in range(6):
                if i == 5:
                    self.clock.advance(VIOLATION_LOG_INTERVAL)
                    self.runner.drain()  # (the stream's free-space measurement)
                handler, transport = attached(self.broker, f"device{i}", self.clock, factory=factory)
                framer = PacketFramer(1 << 20)
                framer.feed(packets.connect(f"device{i}", 30, True))
                for packet in framer.feed(packets.publish("telemetry/t", b"1", 1, False, 1)):
                    handler.packet_received(packet)
                handler.packets_done()
                self.turn()
                self.runner.drain()
                self.turn()
                self.assertTrue(transport.disconnecting)
        lines = [formatEvent(e) for e in logs if "not acknowledging" in formatEvent(e)]
        self.assertEqual(lines, [
            "listener default: not acknowledging telemetry/t from 'device0': journal stream 's': write failed:"
            " [Errno 28] No space left on device: '/j/s/00000000000000000001.seg'; closing the connection",
            "listener default: not acknowledging telemetry/t from 'device5': journal stream 's' is full"
            " (min-free-disk); append rejected; closing the connection (and 4 more closed since the last"
            " such line)"])
        self.assertEqual(factory.violations, 0)


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

    def test_persistent_sessions_qos2_ids_are_logged_before_pubrec_and_pubcomp(self) -> None:
        """A persistent session's QoS 2 packet id is in the state log before its PUBREC leaves,
        and its release before the PUBCOMP (else, after a crash, a new message under the
        reused id would be taken for a resend and lost)."""
        self.persistent_device()
        self.publish("local/q", 2, 4)
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.state_runner.drain()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 4))
        self.read(packets.ack(packets.PUBREL, 4))
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 4))
        self.state_runner.drain()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 4) + packets.ack(packets.PUBCOMP, 4))
        self.assertEqual(self.state_log.durable, 2)

    def test_qos2_id_is_logged_only_once_its_message_is_journaled(self) -> None:
        """A persistent session's QoS 2 PUBLISH that a link journals: its packet id goes to the
        state log only once the journal holds the message, and PUBREC once both are durable.
        (Logged at once, the two streams' writes raced: a crash with the id durable and the
        message not left the client's resend taken for a duplicate, and the message lost.)"""
        self.persistent_device()
        self.publish("telemetry/q", 2, 4)
        self.turn()
        self.state_runner.drain()
        self.assertEqual(self.state_log.appended, 0)  # a crash now: the resend is a new message
        self.runner.step()
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.state_log.appended, 1)
        self.state_runner.drain()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 4))

    def test_checkpoint_holds_a_qos2_id_only_once_its_message_is_journaled(self) -> None:
        """The broker's checkpoint (written by another thread, about a second after a change)
        does not hold a persistent session's QoS 2 id before its message is in the journal
        either: it would make the same loss after a crash as the state log."""
        self.persistent_device()
        self.publish("telemetry/q", 2, 4)
        self.turn()
        self.assertEqual(checkpoint_content(self.broker)["sessions"][0]["inflight_in"], [])
        self.runner.step()
        self.turn()
        self.assertEqual(checkpoint_content(self.broker)["sessions"][0]["inflight_in"], [4])

    def test_qos2_id_is_logged_after_the_state_its_message_changed(self) -> None:
        """A persistent session's retained QoS 2 PUBLISH no link journals: its id follows the
        retained message into the state log, so a power cut that tears the batch's tail cannot
        keep the id (the resend then taken for a duplicate) and lose the message."""
        ops: list[str] = []
        append_then = self.state_stream.append_then

        def noting(record: Record, on_durable: Any, on_failed: Any) -> None:
            ops.append(dict(record.headers)["op"])
            append_then(record, on_durable, on_failed)

        self.state_stream.append_then = noting  # type: ignore[method-assign]
        self.persistent_device()
        self.publish("local/r", 2, 4, retain=True)
        self.assertEqual(ops, ["retain", "rec"])
        self.turn()
        self.state_runner.drain()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 4))

    def test_clean_sessions_qos2_ids_are_not_logged(self) -> None:
        """A clean session's QoS 2 flow writes nothing to the state log and waits for nothing."""
        self.publish("local/q", 2, 4)
        self.read(packets.ack(packets.PUBREL, 4))
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBREC, 4) + packets.ack(packets.PUBCOMP, 4))
        self.assertEqual(self.state_log.appended, 0)

    def test_a_violation_closes_after_the_pubcomp_of_the_pubrel_before_it(self) -> None:
        """docs/configuration.md (Bad clients): a persistent session's PUBREL, then a bad
        packet, in one read: the PUBCOMP waits for the release to be in the state log, and
        the close waits for the PUBCOMP."""
        self.persistent_device()
        self.publish("local/q", 2, 4)
        self.turn()
        self.state_runner.drain()
        self.turn()
        self.transport.clear()
        self.receive(packets.ack(packets.PUBREL, 4) + b"\xf0\x00")
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.state_runner.drain()
        self.turn()
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBCOMP, 4))
        self.assertTrue(self.transport.disconnecting)

    def test_a_violation_closes_after_the_suback_of_the_subscribe_before_it(self) -> None:
        """A persistent session's SUBSCRIBE, then a bad packet, in one read: the SUBACK waits
        for the subscription to be in the state log, and the close waits for the SUBACK."""
        self.persistent_device()
        self.receive(packets.subscribe(1, [("a/#", 1)]) + b"\xf0\x00")
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.state_runner.drain()
        self.turn()
        self.assertEqual(self.transport.value(), packets.suback(1, [1]))
        self.assertTrue(self.transport.disconnecting)

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
        self.clock = Clock()
        self.files, self.runner = PowerCutFiles(), ManualRunner()
        self.stream = open_stream(self.files, clock=self.clock, run=self.runner, directory="/j/state")
        self.runner.drain()
        self.broker = make_broker(self, self.clock)
        self.offline = self.broker.create_offline_session("offline")
        self.broker.subscribe_session(self.offline, "q/#", 1)
        self.broker.state_log = StateLog(self.stream, self.clock)
        self.handler, self.transport = attached(self.broker, "publisher", self.clock)
        self.framer = PacketFramer(1 << 20)
        self.framer.feed(packets.connect("publisher", 30, True))

    def publish(self, topic: str, qos: int, packet_id: int, retain: bool = False) -> None:
        for packet in self.framer.feed(packets.publish(topic, b"v", qos, retain, packet_id)):
            self.handler.packet_received(packet)
        self.handler.packets_done()

    def turn(self) -> None:
        self.clock.advance(0)
        self.clock.advance(0)

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
        self.assertIn("r/1", self.broker.retained)
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


class PluginsDecideCase(SynchronousTestCase):
    """The base of tests on the checked path (topic plugins) whose plugins answer when the test
    says: a broker as with a topic plugin configured, each answer a Deferred in
    :attr:`decisions`, and a client ``device`` connected (:attr:`handler`, :attr:`transport`)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = make_broker(self, self.clock)
        self.broker.fast_path = False  # as with a topic plugin configured
        self.decisions: list[Deferred[bool]] = []
        self.patch(self.broker.plugins, "topic_allowed", self.topic_allowed)
        self.handler, self.transport = attached(self.broker, "device", self.clock)
        self.handler.connection.framer.feed(packets.connect("device", 30, True))

    def topic_allowed(self, view: Any, topic: str, action: Any) -> Deferred[bool]:
        """The plugins' answer, decided by the test."""
        self.decisions.append(Deferred())
        return self.decisions[-1]


class CheckedPathViolationTests(PluginsDecideCase):
    """docs/configuration.md (Bad clients) on the checked path (topic plugins): a PUBLISH
    still waiting for the plugins when a violation comes is acknowledged once they decide,
    then the connection is closed."""

    def test_a_violation_closes_after_the_plugins_decided_the_publishes_before_it(self) -> None:
        """QoS 1 and QoS 0 PUBLISHes, then a violation, in one read: nothing is sent and the
        connection stays open while the plugins decide; once they did, the PUBACK, then the
        close in order."""
        self.handler.connection.dataReceived(packets.publish("local/a", b"1", 1, False, 7)
                                             + packets.publish("local/b", b"2", 0) + b"\xf0\x00")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.decisions[0].callback(True)
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 7))
        self.assertFalse(self.transport.disconnecting)  # the QoS 0 PUBLISH is still being decided
        self.decisions[1].callback(True)
        self.clock.advance(0)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), packets.ack(packets.PUBACK, 7))


class CheckedPathDurableWaitTests(SynchronousTestCase):
    """docs/broker.md (A publisher that does not wait) on the checked path (topic plugins):
    acknowledgements waiting for the journal stop reading there too, and nothing is lost
    or reordered."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = make_broker(self, self.clock)
        self.broker.fast_path = False  # as with a topic plugin configured
        self.patch(self.broker.plugins, "topic_allowed", lambda view, topic, action: succeed(True))
        self.journaled: list[str] = []
        self.waiting: list[Any] = []
        self.broker.durable_gate.install(self.persist_many, lambda topic: True)
        self.handler, self.transport = attached(self.broker, "device", self.clock)
        self.handler.connection.framer.feed(packets.connect("device", 30, True))

    def persist_many(self, messages: Any, on_durable: Any, on_failed: Any, *, reserved: bool = False) -> bool:
        """A journal whose appends the test makes durable (:meth:`durable`)."""
        self.journaled.extend(topic for topic, _, _, _ in messages)
        self.waiting.append(on_durable)
        return True

    def durable(self) -> None:
        """Every append so far is durable; end the turn."""
        waiting, self.waiting = self.waiting, []
        for on_durable in waiting:
            on_durable(None)
        self.clock.advance(0)

    def test_reading_stops_and_resumes_on_the_checked_path(self) -> None:
        """More PUBLISHes than DURABLE_WAIT_LIMIT in one read, each checked by the plugins
        and then appended: reading stops at the first past the limit, resumes once they are
        durable, and every message is journaled and acknowledged once, in arrival order."""
        total = DURABLE_WAIT_LIMIT + 10
        self.handler.connection.dataReceived(b"".join(packets.publish(f"t/{i}", b"1", 1, False, i)
                                                      for i in range(1, total + 1)))
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(len(self.journaled), DURABLE_WAIT_LIMIT + 1)
        self.durable()
        self.assertEqual(self.transport.producerState, "producing")
        self.durable()
        self.assertEqual(self.journaled, [f"t/{i}" for i in range(1, total + 1)])
        self.assertEqual(self.transport.value(), b"".join(packets.ack(packets.PUBACK, i) for i in range(1, total + 1)))
