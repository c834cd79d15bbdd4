"""The in-process bus between the gateway's services and the local broker's clients."""

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker.bus import BusMessage, LocalBus
from gateway.errors import BrokerError
from tests.broker.harness import port_of, start_broker
from tests.mqttclient import TestClient


class LocalBusUnitTests(SynchronousTestCase):
    """Subscriptions, unsubscription and filter validation without a broker."""

    def test_dispatch_matches_filters(self) -> None:
        """Subscribers get matching messages only, until they unsubscribe."""
        bus, seen = LocalBus(), []
        unsubscribe = bus.subscribe("telemetry/#", seen.append)
        bus.subscribe("event/+", lambda m: seen.append(("event", m.topic)))
        bus.dispatch(BusMessage("telemetry/a/b", b"1", 1, False))
        bus.dispatch(BusMessage("other", b"2", 0, False))
        unsubscribe()
        bus.dispatch(BusMessage("telemetry/c", b"3", 0, False))
        bus.dispatch(BusMessage("event/x", b"4", 0, False))
        self.assertEqual(seen, [BusMessage("telemetry/a/b", b"1", 1, False), ("event", "event/x")])
        self.assertTrue(bus.has_subscribers)

    def test_matches_are_remembered_until_subscriptions_change(self) -> None:
        """A topic seen before is matched from the cache; subscribing or unsubscribing resets it."""
        bus, seen = LocalBus(), []
        self.assertFalse(bus.wants("edge/x"))
        unsubscribe = bus.subscribe("edge/+", seen.append)
        self.assertTrue(bus.wants("edge/x"))
        bus.dispatch(BusMessage("edge/x", b"1", 0, False))
        unsubscribe()
        self.assertFalse(bus.wants("edge/x"))
        bus.dispatch(BusMessage("edge/x", b"2", 0, False))
        self.assertEqual([m.payload for m in seen], [b"1"])

    def test_the_match_cache_is_bounded(self) -> None:
        """Each new topic's matches are cached, MATCH_CACHE_SIZE topics at most: the cache then
        starts again empty, and matches stay right (readside.md: the broker's ``bus_cache``)."""
        from gateway.broker.bus import MATCH_CACHE_SIZE
        bus = LocalBus()
        bus.subscribe("d/+", print)
        self.assertTrue(all(bus.wants(f"d/{n}") for n in range(MATCH_CACHE_SIZE + 3)))
        self.assertEqual(bus.topics_cached, 3)
        self.assertFalse(bus.wants("e/0"))

    def test_failing_subscriber_does_not_stop_others(self) -> None:
        """An exception in one callback is logged; the next callback still runs."""
        bus, seen = LocalBus(), []
        bus.subscribe("#", lambda m: 1 / 0)
        bus.subscribe("#", seen.append)
        bus.dispatch(BusMessage("t", b"", 0, False))
        self.assertEqual(len(seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_invalid_input(self) -> None:
        """Bad filters, topics and QoS are refused; publishing with no broker fails clearly."""
        bus = LocalBus()
        self.assertRaises(ValueError, bus.subscribe, "a/#/b", print)
        self.assertRaises(ValueError, bus.publish, "a/+", b"")
        self.assertRaises(ValueError, bus.publish, "a", b"", 3)
        self.failureResultOf(bus.publish("a", b""), BrokerError)


class ReservedPublishTests(SynchronousTestCase):
    """``publish(..., reserved=True)`` reaches the links' persist hook as a reserved append."""

    def test_reserved_reaches_the_hook(self) -> None:
        """The command dispatcher's replies may use the journal's reserve (docs/commands.md):
        the bus hands ``reserved`` through the durable gate to the hook; other publishes are
        not reserved."""
        from gateway.broker.durablegate import DurableGate

        class Broker:
            durable_gate = DurableGate()
            has_client_subscribers = False

            def publish_internal(self, topic: str, payload: bytes, qos: int, retain: bool, link: str = "") -> None:
                pass

        calls: list[tuple[str, bool]] = []

        def hook(messages: Any, on_durable: Any, on_failed: Any, reserved: bool = False) -> bool:
            calls.append((messages[0][0], reserved))
            on_durable(None)
            return True

        broker = Broker()
        broker.durable_gate.install(hook, lambda topic: True)
        bus = LocalBus()
        bus.attach(broker)
        self.successResultOf(bus.publish("command//gw/res/1/200", b"{}", 1, reserved=True))
        self.successResultOf(bus.publish("telemetry/x", b"{}", 1))
        self.assertEqual(calls, [("command//gw/res/1/200", True), ("telemetry/x", False)])


class RefusedAppendTests(SynchronousTestCase):
    """A publish the journal refuses still reaches the local broker."""

    def test_a_refused_append_fails_the_publish_but_is_delivered_and_retained_locally(self) -> None:
        """A stream full under ``reject-new`` refuses the gateway's own report: the publish
        fails (the report is not counted, the admin API answers 500), yet the broker's clients
        and the bus subscribers got it, retained as asked: docs/telemetry.md's Reports says the
        local broker has it all the same, only the cloud does not."""
        from gateway.broker.durablegate import DurableGate
        from gateway.errors import JournalError

        class Broker:
            durable_gate = DurableGate()
            has_client_subscribers = True

            def __init__(self) -> None:
                self.published: list[tuple[str, bytes, int, bool]] = []

            def publish_internal(self, topic: str, payload: bytes, qos: int, retain: bool, link: str = "") -> None:
                self.published.append((topic, payload, qos, retain))

            def state_durable(self) -> "Deferred[None] | None":
                return None

        def refuse(messages: Any, on_durable: Any, on_failed: Any, reserved: bool = False) -> bool:
            on_failed(JournalError("journal stream 'link-cloud' is full (max-bytes); append rejected"))
            return True

        broker = Broker()
        broker.durable_gate.install(refuse, lambda topic: True)
        bus, seen = LocalBus(), []
        bus.attach(broker)
        bus.subscribe("edge/gateway/reports/#", seen.append)
        self.failureResultOf(bus.publish("edge/gateway/reports/device_info", b"{}", 1, True), JournalError)
        self.assertEqual(broker.published, [("edge/gateway/reports/device_info", b"{}", 1, True)])
        self.assertEqual(seen, [BusMessage("edge/gateway/reports/device_info", b"{}", 1, True)])


class LocalBusBrokerTests(TestCase):
    """The bus against a running broker and a real MQTT client."""

    timeout = 30

    @inlineCallbacks
    def test_bus_sees_client_publishes_and_reaches_clients(self):
        """A client's publish reaches bus subscribers with QoS and retain; bus publishes reach clients."""
        service = yield start_broker(self, reactor)
        got: Deferred[BusMessage] = Deferred()
        service.bus.subscribe("telemetry/#", lambda m: got.called or got.callback(m))
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(port_of(service))
        yield client.subscribe("edge/#", 1)
        yield client.publish("telemetry/room1", b"21.5", 1, retain=True)
        message = yield got.addTimeout(10, reactor)
        self.assertEqual(message, BusMessage("telemetry/room1", b"21.5", 1, True))
        yield service.bus.publish("edge/connection/remote/status", b'{"connected": false}', 1, retain=True)
        received = yield client.next_message()
        self.assertEqual((received.topic, received.payload), ("edge/connection/remote/status",
                                                               b'{"connected": false}'))


class CloudRetainedPublishTests(SynchronousTestCase):
    """``publish(..., link=...)``: a cloud's retained message, or its removal, on the bus."""

    def test_a_links_retained_change_waits_for_the_broker_state(self) -> None:
        """A retained message a link brings down (or removes, docs/topics.md) fires only once
        the broker's state log holds it: the link acknowledges the cloud then, and a removal
        acknowledged but lost in a crash would bring the withdrawn command back at the next
        start, the cloud never sending the removal again. Other publishes do not wait."""
        from gateway.broker.durablegate import DurableGate

        class Broker:
            durable_gate = DurableGate()
            has_client_subscribers = False
            retained_links = {"command//d/req/1/x": "cloud"}

            def __init__(self) -> None:
                self.logged: Deferred[None] = Deferred()
                self.published: list[tuple[str, bytes, bool, str]] = []

            def publish_internal(self, topic: str, payload: bytes, qos: int, retain: bool, link: str = "") -> None:
                self.published.append((topic, payload, retain, link))

            def state_durable(self) -> "Deferred[None] | None":
                return self.logged if self.published[-1][2] else None

        broker = Broker()
        bus = LocalBus()
        bus.attach(broker)
        self.assertEqual((bus.retained_link("command//d/req/1/x"), bus.retained_link("command//d/req/2/x")),
                         ("cloud", ""))
        removed = bus.publish("command//d/req/1/x", b"", 1, True, link="cloud")
        self.assertNoResult(removed)
        self.successResultOf(bus.publish("edge/gateway/reports/x", b"r", 1, True))  # the gateway's own: no wait
        self.successResultOf(bus.publish("command//d/req/2/x", b"live", 1, False, link="cloud"))
        broker.logged.callback(None)
        self.successResultOf(removed)
        self.assertEqual(broker.published[0], ("command//d/req/1/x", b"", True, "cloud"))
