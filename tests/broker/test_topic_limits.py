"""What one client can make the broker keep: ``max_topic_levels`` and ``max_subscriptions``,
on a real broker's handler over a StringTransport and task.Clock (no sockets, no sleeps), and
a broker service started on state saved without them (a socket on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.connection import MQTTConnection, MQTTListenerFactory
from gateway.broker.core import GatewayBroker
from gateway.broker.limits import SubscriptionLimits
from gateway.broker.snapshot import CappedClientSnapshot
from gateway.mqtt import packets
from gateway.mqtt.packets import SUBACK_FAILURE
from tests.broker import packets as raw
from tests.broker.harness import ANONYMOUS, port_of, start_broker
from tests.broker.mqttraw import scripted_connect
from tests.broker.test_crash_state import started_or_why
from tests.gatewayprocess import spawn_gateway
from tests.logevents import capture_log_events
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.broker.test_durable_ack import CONFIG, attached

LEVELS = 3
CAP = 3


def deep(levels: int, wildcard: str = "+") -> str:
    """A filter (or, with another ``wildcard``, a topic) of ``levels`` levels: ``x/+/+...``."""
    return "/".join(["x"] + [wildcard] * (levels - 1))


class TopicLimitsTests(SynchronousTestCase):
    """A broker with ``max_topic_levels: 3`` and ``max_subscriptions: 3``; one client on it."""

    def setUp(self) -> None:
        self.clock = Clock()
        loop = asyncio.new_event_loop()  # amqtt's plugin manager wants one; nothing runs on it here
        self.addCleanup(loop.close)
        self.broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), self.clock,
                                    max_topic_levels=LEVELS, max_subscriptions=CAP)
        self.factory = MQTTListenerFactory("default", self.broker, self.clock, 1 << 20, 10.0,
                                           max_topic_levels=LEVELS)
        self.handler, self.transport = attached(self.broker, "dev", self.clock, factory=self.factory)
        # (attached skips the CONNECT: the framer counts one, the connection keeps its id, as after a real one)
        self.handler.connection.framer.feed(packets.connect("dev", 30, True))
        self.handler.connection.client_id = "dev"
        self.events = capture_log_events(self)

    def receive(self, data: bytes) -> bytes:
        """Feed ``data`` to the client's connection; what it was answered in that turn."""
        self.transport.clear()
        self.handler.connection.dataReceived(data)
        self.clock.advance(0)
        self.clock.advance(0)
        return self.transport.value()

    def logged(self, text: str) -> list[str]:
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def test_a_filter_too_deep_gets_0x80_and_the_others_are_granted(self) -> None:
        """A SUBSCRIBE of a filter of 4 levels between two of 3: SUBACK 0, 0x80, 1; the deep one
        is neither in the session nor in the routing tree; counted and logged with the client id.
        Before, every filter was granted, whatever its depth (a 64 KiB one cost 2 MB)."""
        answer = self.receive(raw.subscribe(("a/+/c", 0), (deep(4), 1), ("a/b/#", 1), packet_id=5))
        self.assertEqual(answer, packets.suback(5, [0, SUBACK_FAILURE, 1]))
        self.assertEqual(list(self.handler.session.filters), ["a/+/c", "a/b/#"])
        self.assertNotIn(deep(4), self.broker.subscriptions)
        self.assertEqual(self.broker.limits.filters_too_deep, 1)
        self.assertEqual(self.broker.limits.subscriptions_refused, 0)
        [line] = self.logged("refusing the subscription")
        self.assertIn("'dev'", line)
        self.assertIn("4 levels, more than max_topic_levels (3)", line)
        self.assertFalse(self.transport.disconnecting)

    def test_filters_past_the_cap_get_0x80(self) -> None:
        """Five new filters in one SUBSCRIBE with a cap of 3: the first three are granted, the
        other two get 0x80, counted for the client and logged once (throttled)."""
        filters = [(f"f/{n}", 1) for n in range(5)]
        answer = self.receive(raw.subscribe(*filters, packet_id=2))
        self.assertEqual(answer, packets.suback(2, [1, 1, 1, SUBACK_FAILURE, SUBACK_FAILURE]))
        self.assertEqual(list(self.handler.session.filters), ["f/0", "f/1", "f/2"])
        self.assertEqual(self.broker.limits.subscriptions_refused, 2)
        self.assertEqual(self.broker.limits.refused_by_client, {"dev": 2})
        [line] = self.logged("refusing the subscription")
        self.assertIn("'dev' to f/3: it has 3 subscriptions, max_subscriptions is 3", line)

    def test_a_filter_the_session_has_is_granted_at_the_cap(self) -> None:
        """At the cap, subscribing again to a filter the session has is no new subscription:
        granted at the new QoS (§3.8.4); after an UNSUBSCRIBE a new one fits again."""
        self.receive(raw.subscribe(("f/0", 0), ("f/1", 0), ("f/2", 0), packet_id=1))
        answer = self.receive(raw.subscribe(("f/1", 2), ("f/9", 0), packet_id=2))
        self.assertEqual(answer, packets.suback(2, [2, SUBACK_FAILURE]))
        self.assertEqual(self.broker.subscriptions["f/1"]["dev"][1], 2)
        self.receive(raw.unsubscribe("f/0", packet_id=3))
        self.assertEqual(self.receive(raw.subscribe(("f/9", 0), packet_id=4)), packets.suback(4, [0]))

    def test_the_per_client_count_ends_with_the_session(self) -> None:
        """A clean session's refusals are listed for it while it lives, not after."""
        self.receive(raw.subscribe(*[(f"f/{n}", 0) for n in range(4)], packet_id=1))
        self.assertEqual(self.broker.limits.refused_by_client, {"dev": 1})
        self.handler.connection.connectionLost()
        self.assertEqual(self.broker.limits.refused_by_client, {})
        self.assertEqual(self.broker.limits.subscriptions_refused, 1)

    def test_a_publish_too_deep_closes_the_connection(self) -> None:
        """A QoS 1 PUBLISH to a topic of 4 levels after one of 3, in one read: the first is
        acknowledged, the deep one is not (neither journaled nor delivered nor retained) and
        the connection is closed, as for any invalid topic (mosquitto: "malformed packet");
        counted as a violation and as a topic too deep, logged with the client id."""
        persisted: list[Any] = []  # (the links journal x/...: the deep topic would be appended first)
        self.broker.durable_gate.install(lambda messages, ok, failed, *, reserved=False: persisted.extend(messages) and False,
                                         lambda topic: topic.startswith("x/"))
        topic = deep(4, "l")
        answer = self.receive(raw.publish("a/b/c", b"ok", 1, packet_id=1)
                              + raw.publish(topic, b"deep", 1, packet_id=2, retain=True))
        self.assertEqual(answer, packets.ack(packets.PUBACK, 1))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(persisted, [])
        self.assertEqual(self.broker.retained, {})
        self.assertEqual((self.factory.violations, self.factory.topics_too_deep), (1, 1))
        [line] = self.logged("more than max_topic_levels")
        self.assertIn("client 'dev': PUBLISH topic x/l/l/l has 4 levels, more than max_topic_levels (3)", line)

    def test_a_will_topic_too_deep_closes_the_connection_before_connack(self) -> None:
        """A CONNECT whose will topic has 4 levels is closed without CONNACK and never reaches the
        broker (no session), as mosquitto closes it; counted and logged with its client id."""
        decided: list[Any] = []
        factory = MQTTListenerFactory("default", self.broker, self.clock, 1 << 20, 10.0, max_topic_levels=LEVELS)
        factory.acceptor = type("Acceptor", (), {"client_connecting": lambda _, c, p: decided.append(p)})()
        connection = factory.buildProtocol(None)
        assert isinstance(connection, MQTTConnection)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(raw.connect("willing", flags=0x06, will=(deep(4, "w"), b"gone")))
        self.clock.advance(0)
        self.assertEqual((decided, transport.value()), ([], b""))
        self.assertTrue(transport.disconnecting)
        self.assertEqual((factory.violations, factory.topics_too_deep), (1, 1))
        [line] = self.logged("will topic")
        self.assertIn("the will topic of client 'willing' has 4 levels, more than max_topic_levels (3)", line)

    def test_a_plugin_subscription_is_held_to_the_same_limits(self) -> None:
        """amqtt's ``add_subscription`` (through the broker's ``plugin_subscribe``) gets 0x80 for
        a filter too deep and for a new one past the cap, as a client's SUBSCRIBE would."""
        self.assertEqual(self.broker.plugin_subscribe("dev", deep(4), 1), SUBACK_FAILURE)
        for n in range(CAP):
            self.assertEqual(self.broker.plugin_subscribe("dev", f"p/{n}", 1), 1)
        self.assertEqual(self.broker.plugin_subscribe("dev", "p/9", 1), SUBACK_FAILURE)
        self.assertEqual(self.broker.plugin_subscribe("dev", "p/0", 2), 2)
        self.assertEqual((self.broker.limits.filters_too_deep, self.broker.limits.subscriptions_refused), (1, 1))

    def test_plugin_publishes_too_deep_are_refused_the_gateways_own_are_not(self) -> None:
        """A plugin's broadcast or retain raises ValueError naming the limit for a topic of 4
        levels (a retained one would cost a node per level like a client's); the bus (the
        gateway's own publishes, the links' cloud messages) takes it: a cloud message refused
        there would never be acknowledged, and the cloud would send it again at every reconnect."""
        self.broker.bus.attach(self.broker)
        with self.assertRaises(ValueError) as caught:
            self.broker.plugin_publish(deep(4, "p"), b"p", 0, True)
        self.assertIn("4 levels, more than the broker's max_topic_levels (3)", str(caught.exception))
        self.assertEqual(self.broker.retained, {})
        self.broker.plugin_publish("a/b/c", b"p", 0, True)
        self.assertIn("a/b/c", self.broker.retained)
        self.successResultOf(self.broker.bus.publish(deep(4, "b"), b"p", 1, True))
        self.assertIn(deep(4, "b"), self.broker.retained)


class NoLimitTests(SynchronousTestCase):
    """``0`` for either bound takes any number."""

    def test_zero_is_no_limit(self) -> None:
        limits = SubscriptionLimits(0, 0, Clock().seconds)
        filters = {f"f/{n}": None for n in range(5000)}
        self.assertTrue(limits.allows("c", filters, deep(32768)))
        self.assertFalse(limits.too_deep(deep(32768)))


class RestoredOverLimitsTests(SynchronousTestCase):
    """State saved under larger bounds (or none) is kept as saved, with one warning."""

    def test_one_warning_names_what_is_over(self) -> None:
        events = capture_log_events(self)
        limits = SubscriptionLimits(LEVELS, CAP, Clock().seconds)
        limits.warn_restored({"big": dict.fromkeys(["a", "b", "c", "d", deep(5)]), "small": {"a": None}},
                             ["t", deep(4, "t")])
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1)
        self.assertIn("1 sessions with more than max_subscriptions (3) subscriptions (the most: 'big' with 5", lines[0])
        self.assertIn("1 subscriptions and 1 retained topics with more than max_topic_levels (3) levels", lines[0])
        self.assertIn("kept as saved", lines[0])

    def test_nothing_over_logs_nothing(self) -> None:
        events = capture_log_events(self)
        SubscriptionLimits(LEVELS, CAP, Clock().seconds).warn_restored({"c": {"a/b": None}}, ["a/b/c"])
        self.assertEqual(events, [])



class SavedStateOverTheLimitsTests(TestCase):
    """A broker service started on a checkpoint written by a version without the bounds."""

    @inlineCallbacks
    def test_an_old_checkpoint_over_the_limits_loads_whole(self):
        """The checkpoint's session holds 4 subscriptions (one of them 7 levels deep) and a
        retained topic of 7 levels, over ``max_subscriptions: 2`` and ``max_topic_levels: 6``:
        all of it comes back, with one warning; its client, back, is granted a filter it has
        (§3.8.4) and refused a new one (0x80), which the snapshot counts, for it too."""
        state_dir = Path(self.mktemp())
        (state_dir / "broker").mkdir(parents=True)
        saved = ["a", "b", "c", deep(7)]
        (state_dir / "broker" / "state.json").write_text(json.dumps({
            "format": 1, "log_through": 0, "retained": [[deep(7, "r"), "YQ==", 1]],
            "sessions": [{"client_id": "old", "username": None, "subscriptions": [[f, 1] for f in saved],
                          "queue": [], "inflight": [], "inflight_in": []}]}))
        events = capture_log_events(self)
        service = yield start_broker(self, reactor, {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
                                                     "plugins": ANONYMOUS, "max_subscriptions": 2,
                                                     "max_topic_levels": 6}, state_dir=state_dir)
        self.assertEqual(list(service.broker.sessions["old"].filters), saved)
        self.assertEqual(list(service.broker.retained), [deep(7, "r")])
        [warning] = [formatEvent(e) for e in events if "kept as saved" in formatEvent(e)]
        self.assertIn("1 sessions with more than max_subscriptions (2) subscriptions (the most: 'old' with 4", warning)
        self.assertIn("1 subscriptions and 1 retained topics with more than max_topic_levels (6) levels", warning)
        client = yield scripted_connect(reactor, port_of(service))
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(raw.connect("old", flags=0x00) + raw.subscribe(("b", 0), ("new", 0), packet_id=4))
        yield client.until(lambda: len(client.others) == 2, reactor)
        self.assertEqual(client.others, [(0x20, b"\x01\x00"), (0x90, b"\x00\x04\x00\x80")])
        snapshot = service.snapshot()
        self.assertEqual((snapshot.subscriptions_refused, snapshot.filters_too_deep), (1, 0))
        self.assertEqual(snapshot.capped_clients, (CappedClientSnapshot("old", True, 4, 1),))


class GatewayTopicLimitsTests(TestCase):
    """A real ``twistd gateway`` with ``max_topic_levels: 6``, ``max_subscriptions: 2`` and
    ``max_retained_messages: 2``, driven over a socket on 127.0.0.1, read through its ``/metrics``."""

    timeout = 120

    @inlineCallbacks
    def test_what_one_client_may_make_the_gateway_keep(self):
        """One SUBSCRIBE of four new filters, the second 7 levels deep: SUBACK 0, 0x80, 1, 0x80
        (the fourth is past the cap); then a PUBLISH to a topic of 7 levels closes the
        connection, unacknowledged. The log names the client (one line for both refusals: they are
        throttled together); /metrics counts them;
        another client is served all the while.

        It starts on a saved state holding 3 retained messages, one more than it may keep: it
        keeps the first two and says so (before, it restored them all, however many and large:
        in a memory limit, a crash loop); a client's retained PUBLISH to a new topic is then
        acknowledged and not retained, counted in /metrics."""
        work = Path(self.mktemp()).resolve()
        (work / "state" / "broker").mkdir(parents=True)
        (work / "state" / "broker" / "state.json").write_text(json.dumps({
            "format": 1, "log_through": 0, "sessions": [], "retained": [[f"r/{n}", "YQ==", 1] for n in range(3)]}))
        port, metrics_port = free_port(), free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "  max_topic_levels: 6\n  max_subscriptions: 2\n  max_retained_messages: 2\n"
            f"ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: 'tcp:{metrics_port}:interface=127.0.0.1'\n")
        proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc)
        client = yield scripted_connect(reactor, port)
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(raw.connect("greedy") + raw.subscribe(("a/#", 0), (deep(7), 1), ("b/+", 1),
                                                                      ("c", 0), packet_id=3))
        yield client.until(lambda: len(client.others) == 2, reactor)
        self.assertEqual(client.others[1], (0x90, b"\x00\x03\x00\x80\x01\x80"))
        metrics = yield metrics_text(metrics_port)
        for name, value in (("gateway_broker_filters_too_deep_total", 1),
                            ("gateway_broker_subscriptions_refused_total", 1),
                            ('gateway_broker_client_subscriptions_refused_total{client_id="greedy"}', 1)):
            self.assertIn(f"\n{name} {value}.0\n", metrics)
        client.transport.write(raw.publish("a/1", b"kept", 1, packet_id=1))
        yield client.until(lambda: len(client.others) == 3, reactor)
        client.transport.write(raw.publish(deep(7, "l"), b"x", 1, packet_id=2))
        yield client.lost
        self.assertEqual([p[:2] for p in client.publishes], [("a/1", b"kept")])
        self.assertEqual(client.others[2:], [(0x40, b"\x00\x01")])
        other = TestClient(reactor)
        self.addCleanup(other.stop)
        self.assertEqual((yield other.connect(port)), 0)
        yield other.subscribe("still/served", 1)
        yield other.publish("still/served", b"yes", 1)
        self.assertEqual((yield other.next_message()).payload, b"yes")
        yield other.publish("r/new", b"not kept", 1, retain=True)  # (acknowledged: publish waits for the PUBACK)
        metrics = yield metrics_text(metrics_port)
        self.assertIn("\ngateway_broker_topics_too_deep_total 1.0\n", metrics)
        self.assertIn("\ngateway_broker_retained_dropped_at_start_total 1.0\n", metrics)
        self.assertIn('\ngateway_broker_retained_refused_total{limit="max_retained_messages"} 1.0\n', metrics)
        output = proc.output.decode(errors="replace")
        self.assertIn("kept 2 (8 bytes), dropped 1 (4 bytes: r/2)", output)
        self.assertIn("refusing the subscription of 'greedy' to x/+/+/+/+/+/+: it has 7 levels", output)
        self.assertIn("client 'greedy': PUBLISH topic x/l/l/l/l/l/l has 7 levels, more than max_topic_levels (6)",
                      output)


@inlineCallbacks
def metrics_text(port: int) -> Any:
    """The text of a gateway's ``/metrics`` on 127.0.0.1:``port``."""
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    response = yield http.get(f"http://127.0.0.1:{port}/metrics")
    return (yield response.text())
