"""The session life cycle the broker now owns, over real sockets: client ids, wills, takeover, UNSUBSCRIBE;
and the memory hand-back after a wave of clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.bus import BusMessage
from gateway.broker.clientsession import Will
from gateway.errors import JournalError
from gateway.gctuning import ReleaseAfterChurn

from tests.broker import packets
from tests.broker.harness import start_broker
from tests.broker.test_delivery import DeliveryTestCase
from tests.broker.test_durable_ack import attached, make_broker
from tests.logevents import assert_one_line_then_summary

CONNACK_OK = (0x20, b"\x00\x00")
SESSION_PRESENT = (0x20, b"\x01\x00")
PERSISTENT = 0x00
WILL_QOS1 = 0x04 | 0x08


class ClientIdTests(DeliveryTestCase):
    """[MQTT-3.1.3-6] [MQTT-3.1.3-8] an empty client id."""

    @inlineCallbacks
    def test_empty_id_with_clean_session_gets_one(self):
        """CleanSession=1 and no id: accepted, under an id the broker makes; gone with the connection."""
        service = yield start_broker(self, reactor)
        client = yield self.client(service, "")
        self.assertEqual(client.others[0], CONNACK_OK)
        [client_id] = service.broker.live
        self.assertTrue(client_id.startswith("auto-"), client_id)
        client.transport.write(packets.DISCONNECT)
        yield client.lost
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(service.broker.sessions, {})

    @inlineCallbacks
    def test_empty_id_with_persistent_session_is_refused(self):
        """CleanSession=0 and no id: CONNACK 2 (identifier rejected), then the connection closes;
        the log shows the empty id quoted (as every client id), not as a double space."""
        service = yield start_broker(self, reactor)
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        client = yield self.client(service, "", flags=PERSISTENT)
        self.assertEqual(client.others[0], (0x20, b"\x00\x02"))
        yield client.lost.addTimeout(5, reactor)
        self.assertEqual(service.broker.sessions, {})
        self.assertEqual(service.broker.refused, 1)
        [line] = [formatEvent(e) for e in logged if "refusing client" in formatEvent(e)]
        self.assertTrue(line.startswith("refusing client '' from 127.0.0.1:"), line)


class WillTests(DeliveryTestCase):
    """[MQTT-3.1.2-8] [MQTT-3.1.2-10] [MQTT-3.14.4-3] wills."""

    @inlineCallbacks
    def test_will_published_when_the_connection_breaks(self):
        """A connection that ends without DISCONNECT: its will goes to subscribers at its QoS."""
        service = yield start_broker(self, reactor)
        watcher = yield self.subscribed(service, "watcher", ("wills/#", 1))
        doomed = yield self.client(service, "doomed", flags=0x02 | WILL_QOS1, will=("wills/doomed", b"lost"))
        doomed.transport.abortConnection()
        yield watcher.until(lambda: watcher.publishes, reactor)
        self.assertEqual(watcher.publishes[0][:3], ("wills/doomed", b"lost", 1))

    @inlineCallbacks
    def test_disconnect_discards_the_will(self):
        """DISCONNECT first: no will."""
        service = yield start_broker(self, reactor)
        watcher = yield self.subscribed(service, "watcher", ("wills/#", 1))
        polite = yield self.client(service, "polite", flags=0x02 | WILL_QOS1, will=("wills/polite", b"never"))
        polite.transport.write(packets.DISCONNECT)
        yield polite.lost
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(watcher.publishes, [])

    @inlineCallbacks
    def test_retained_will_is_kept(self):
        """A will with the retain flag becomes the topic's retained message."""
        service = yield start_broker(self, reactor)
        doomed = yield self.client(service, "doomed", flags=0x02 | WILL_QOS1 | 0x20, will=("status/doomed", b"offline"))
        doomed.transport.abortConnection()
        yield doomed.lost
        yield deferLater(reactor, 0.05, lambda: None)
        later = yield self.subscribed(service, "later", ("status/#", 1))
        yield later.until(lambda: later.publishes, reactor)
        self.assertEqual(later.publishes[0][:3], ("status/doomed", b"offline", 1))
        self.assertTrue(later.publishes[0][4], "sent as retained")

    @inlineCallbacks
    def test_takeover_publishes_the_old_connections_will(self):
        """[MQTT-3.1.4-2] a second CONNECT with the same id closes the first; the first's will goes out."""
        service = yield start_broker(self, reactor)
        watcher = yield self.subscribed(service, "watcher", ("wills/#", 1))
        first = yield self.client(service, "twin", flags=0x02 | WILL_QOS1, will=("wills/twin", b"first gone"))
        second = yield self.client(service, "twin")
        self.assertEqual(second.others[0], CONNACK_OK)
        yield first.lost.addTimeout(5, reactor)
        yield watcher.until(lambda: watcher.publishes, reactor)
        self.assertEqual(watcher.publishes[0][:2], ("wills/twin", b"first gone"))
        second.transport.write(packets.PINGREQ)
        yield second.until(lambda: (0xD0, b"") in second.others, reactor)

    @inlineCallbacks
    def test_no_wills_at_shutdown(self):
        """Stopping the broker closes clients without publishing their wills (they did nothing wrong)."""
        service = yield start_broker(self, reactor)
        published = []
        service.bus.subscribe("wills/#", published.append)
        client = yield self.client(service, "stays", flags=0x02 | WILL_QOS1, will=("wills/stays", b"x"))
        yield service.stopService()
        yield client.lost.addTimeout(5, reactor)
        self.assertEqual(published, [])


class StopTests(DeliveryTestCase):
    """What clients see when the broker stops (gateway stop, configuration change)."""

    @inlineCallbacks
    def test_deliveries_written_just_before_the_stop_reach_a_clean_session(self):
        """Deliveries written in the reactor turn the stop begins in (a small one, then one
        larger than the socket buffers, which Twisted still holds when the connections are
        closed) all reach a clean-session client, which then reads the end of the stream
        (ConnectionDone), not a reset: the stop closes connections in order. Before, it
        aborted them, and the kernel threw away what it still held."""
        state_dir = Path(self.mktemp())
        state_dir.mkdir()
        service = yield start_broker(self, reactor, state_dir=state_dir)
        client = yield self.subscribed(service, "clean", ("t/#", 0))
        big = b"x" * (4 << 20)
        service.broker.publish_internal("t/small", b"first", 0, False)
        service.broker.publish_internal("t/big", big, 0, False)
        client.transport.write(packets.PINGREQ)  # (left unread: the stop stops reading)
        stopped = service.stopService()
        yield client.lost.addTimeout(10, reactor)
        yield stopped
        self.assertEqual([p[:2] for p in client.publishes], [("t/small", b"first"), ("t/big", big)])
        client.reason.trap(ConnectionDone)


class DollarWillTests(SynchronousTestCase):
    """[MQTT-4.7.2] a will is its client's message: like its PUBLISH, it cannot go to a ``$`` topic
    (docs/topics.md: clients cannot publish to them; docs/broker.md: a will is published as that
    client's message). Driven by StringTransport and task.Clock."""

    def test_will_to_a_dollar_topic_is_dropped(self) -> None:
        """A connection with a retained will on ``$SYS/...`` breaks: nothing is delivered, bus
        subscribers see nothing, nothing is retained; the drop is counted as a ``$`` publish."""
        clock = Clock()
        broker = make_broker(self, clock)
        watcher, watched = attached(broker, "watcher", clock)
        broker.subscribe_session(watcher.session, "$SYS/#", 1)
        seen: list[BusMessage] = []
        broker.bus.subscribe("$SYS/#", seen.append)
        doomed, _ = attached(broker, "doomed", clock)
        doomed.will = Will("$SYS/broker/doomed", b"gone", 1, True)
        clock.advance(0)
        watched.clear()
        doomed.connection.connectionLost()
        clock.advance(0)
        self.assertEqual(watched.value(), b"")
        self.assertEqual(seen, [])
        self.assertEqual(broker.retained, {})
        self.assertEqual(broker.dollar_publishes_dropped, 1)

    def test_a_burst_of_dollar_publishes_and_wills_is_one_line_then_one_summary(self) -> None:
        """docs/configuration.md: a client publishing to $ topics was logged once per connection,
        and each will to a $ topic once: clients connecting in a loop wrote a line each. The
        first is logged at once, then at most one line per 10 s with how many were dropped since;
        each is still acknowledged, dropped and counted."""
        clock = Clock()
        broker = make_broker(self, clock)

        def burst(messages: int) -> list[str]:
            with capturedLogs() as events:
                for n in range(messages):  # each from a new connection: a publish, then a will
                    handler, transport = attached(broker, f"c{n}", clock)
                    if n % 2:
                        handler.will = Will("$SYS/will", b"gone", 0, False)
                    else:
                        handler.connection.framer.feed(packets.connect(f"c{n}"))  # (its CONNECT, read)
                        handler.connection.dataReceived(packets.publish("$SYS/x", b"forged", qos=1, packet_id=7))
                        clock.advance(0)
                        self.assertEqual(transport.value(), b"\x40\x02\x00\x07")  # acknowledged all the same
                    handler.connection.connectionLost()
                    clock.advance(0)
            return [formatEvent(e) for e in events if "dropping" in e.get("log_format", "")]

        line = ("dropping a publish of 'c0' to $SYS/x: clients do not publish to $ topics ({count} dropped since the"
                " last such line; logged at most once every 10 s while they go on)")
        assert_one_line_then_summary(self, burst, line, clock)
        self.assertEqual(broker.dollar_publishes_dropped, 1002)

    def test_a_will_topic_with_a_newline_is_logged_on_one_line(self) -> None:
        """A will topic may hold a newline (MQTT refuses only U+0000): the will's log line shows it
        escaped, as the client id is, so that the client cannot forge a log line of its own."""
        clock = Clock()
        broker = make_broker(self, clock)
        doomed, _ = attached(broker, "doomed\nx", clock)
        doomed.will = Will("wills/x\n2026-12-06T19:00:00-0000 [gateway] forged", b"gone", 0, False)
        clock.advance(0)
        with capturedLogs() as events:
            doomed.connection.connectionLost()
            clock.advance(0)
        [line] = [formatEvent(e) for e in events if "will of" in e.get("log_format", "")]
        self.assertEqual(line, "publishing the will of 'doomed\\nx' to wills/x\\n2026-12-06T19:00:00-0000 [gateway]"
                               " forged")


class JournaledWillTests(SynchronousTestCase):
    """A will is its client's message (docs/broker.md): on a topic the links route
    (docs/topics.md: ``telemetry/#`` goes to the cloud), it goes to the journal like that
    client's PUBLISH. Driven by StringTransport and task.Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = make_broker(self, self.clock)
        self.persisted: list[tuple[str, bytes, int, bool]] = []
        self.durable: list[Any] = []
        self.broker.durable_gate.install(self.persist_many, lambda topic: topic.startswith("telemetry/"))

    def persist_many(self, messages: Any, on_durable: Any, on_failed: Any, *, reserved: bool = False) -> bool:
        """The links' hook: record what is appended, say when it is durable (by hand)."""
        self.persisted.extend(messages)
        self.durable.append((on_durable, on_failed))
        return True

    def test_will_on_a_routed_topic_is_journaled(self) -> None:
        """A connection with a will on ``telemetry/...`` breaks: the will is appended to the
        journal (with its QoS and retain flag), as the client's PUBLISH there would be."""
        doomed, _ = attached(self.broker, "doomed", self.clock)
        doomed.will = Will("telemetry/doomed/status", b"offline", 1, True)
        doomed.connection.connectionLost()
        self.clock.advance(0)
        self.assertEqual(self.persisted, [("telemetry/doomed/status", b"offline", 1, True)])

    def test_will_elsewhere_is_not_journaled(self) -> None:
        """A will on a topic no link routes is only delivered locally."""
        doomed, _ = attached(self.broker, "doomed", self.clock)
        doomed.will = Will("local/doomed", b"offline", 1, False)
        doomed.connection.connectionLost()
        self.clock.advance(0)
        self.assertEqual(self.persisted, [])

    def test_failed_append_is_logged(self) -> None:
        """A journal that refuses the will: a warning naming the client and the error (no
        client waits for an acknowledgement of it)."""
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        doomed, _ = attached(self.broker, "doomed", self.clock)
        doomed.will = Will("telemetry/doomed/status", b"offline", 1, False)
        doomed.connection.connectionLost()
        [(_, on_failed)] = self.durable
        on_failed(Failure(JournalError("stream full")))
        [line] = [formatEvent(event) for event in logged if "stream full" in formatEvent(event)]
        self.assertIn("doomed", line)


class SubscriptionTests(DeliveryTestCase):
    """[MQTT-3.10.4] UNSUBSCRIBE; [MQTT-3.2.2-2] a resumed session."""

    @inlineCallbacks
    def test_unsubscribe_stops_deliveries(self):
        """UNSUBACK carries the packet id; nothing more arrives on the filter; unknown filters are fine."""
        service = yield start_broker(self, reactor)
        sub = yield self.subscribed(service, "sub", ("u/#", 1))
        sub.transport.write(packets.unsubscribe("u/#", "never/subscribed", packet_id=9))
        yield sub.until(lambda: (0xB0, b"\x00\x09") in sub.others, reactor)
        pub = yield self.client(service, "pub")
        pub.transport.write(packets.publish("u/x", b"after", qos=1, packet_id=1))
        yield pub.until(lambda: len(pub.others) >= 2, reactor)  # the PUBACK
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(sub.publishes, [])
        self.assertEqual(service.broker.subscriptions, {})

    @inlineCallbacks
    def test_resumed_session_says_so(self):
        """CleanSession=0 twice: SessionPresent=1 the second time, and the subscription still delivers."""
        service = yield start_broker(self, reactor)
        first = yield self.subscribed(service, "keeper", ("k/#", 1), flags=PERSISTENT)
        first.transport.write(packets.DISCONNECT)
        yield first.lost
        yield deferLater(reactor, 0.05, lambda: None)
        back = yield self.client(service, "keeper", flags=PERSISTENT)
        self.assertEqual(back.others[0], SESSION_PRESENT)
        pub = yield self.client(service, "pub")
        pub.transport.write(packets.publish("k/1", b"for keeper", qos=1, packet_id=1))
        yield back.until(lambda: back.publishes, reactor)
        self.assertEqual(back.publishes[0][:2], ("k/1", b"for keeper"))


class ReleaseAfterChurnTests(SynchronousTestCase):
    """Memory is handed back once after a wave of closed connections, when the wave is over."""

    def test_release_after_a_quiet_wave(self):
        """Below the threshold nothing happens; past it, the release waits for a quiet spell, once."""
        clock = Clock()
        released = []
        churn = ReleaseAfterChurn(clock, threshold=3, quiet=2.0, release=lambda: released.append(1) or True)
        for _ in range(2):
            churn.connection_closed()
        self.assertEqual(clock.getDelayedCalls(), [])
        churn.connection_closed()
        clock.advance(1.5)
        churn.connection_closed()  # the wave goes on: the release waits again
        clock.advance(1.5)
        self.assertEqual(released, [])
        clock.advance(0.6)
        self.assertEqual((released, churn.releases, churn.closed), ([1], 1, 0))

    def test_release_drops_the_attribute_cache_names(self):
        """The release empties CPython's attribute-lookup cache, which holds a reference to
        each name it caches (names made at run time would pin allocator pages)."""
        import sys

        name = "".join(["churn", "_probe_attribute"])  # made at run time: not interned
        for kind in (type("A", (), {}), type("B", (), {}), type("C", (), {})):
            getattr(kind(), name, None)  # cached per type, each entry holding the name
        before = sys.getrefcount(name)
        clock = Clock()
        churn = ReleaseAfterChurn(clock, threshold=1, quiet=0.0, release=lambda: True)
        churn.connection_closed()
        clock.advance(0)
        self.assertLessEqual(sys.getrefcount(name), before - 2)

    def test_stop_cancels(self):
        """A stopped broker schedules no release (no timer outlives it)."""
        clock = Clock()
        churn = ReleaseAfterChurn(clock, threshold=1, quiet=2.0, release=lambda: True)
        churn.connection_closed()
        churn.stop()
        churn.connection_closed()
        self.assertEqual(clock.getDelayedCalls(), [])


class ListenQueueTests(DeliveryTestCase):
    """Hundreds of clients connecting at once fit in the listen queue."""

    @inlineCallbacks
    def test_default_backlog(self):
        """A listener without ``backlog=`` listens with 1024 (Twisted's default is 50); one with it keeps it."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"},
                          "small": {"endpoint": "tcp:0:interface=127.0.0.1:backlog=7"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
        self.assertEqual(service.ports["default"].backlog, 1024)
        self.assertEqual(service.ports["small"].backlog, 7)
