"""The bounds on the broker's retained messages, ``max_retained_messages`` and
``max_retained_bytes``: on a real broker's handler over a StringTransport and task.Clock (no
sockets, no sleeps), a checkpoint read within them, and a broker service started on state saved
over them (a socket on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker import routing
from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.checkpointreader import read_checkpoint
from gateway.broker.core import GatewayBroker
from gateway.broker.retainedlimits import (BY_BYTES, BY_COUNT, DEFAULT_MAX_RETAINED_BYTES,
                                           DEFAULT_MAX_RETAINED_MESSAGES, RetainedBudget, over_bound, retained_size)
from gateway.broker.settings import BrokerSettings
from gateway.broker.checkpointwriter import checkpoint_content, encoded_parts
from gateway.broker.persistence import replay, restore
from gateway.errors import ConfigError
from gateway.journal.record import Record
from gateway.mqtt import packets
from tests.broker import packets as raw
from tests.broker.harness import ANONYMOUS, broker_settings, start_broker
from tests.broker.test_durable_ack import CONFIG, attached
from tests.logevents import capture_log_events

#: ``max_retained_messages`` and ``max_retained_bytes`` of these tests' broker.
COUNT, BYTES = 3, 100


class OverBoundTests(SynchronousTestCase):
    """Which bound a retained message breaks (:func:`over_bound`)."""

    def test_a_new_topic_past_the_count(self) -> None:
        self.assertEqual(over_bound(3, 0, 3, 10, None, 1), BY_COUNT)
        self.assertIsNone(over_bound(3, 0, 2, 10, None, 1))

    def test_a_replacement_adds_no_topic(self) -> None:
        """At the count, a topic that has a message may replace it (EMQX's rule too)."""
        self.assertIsNone(over_bound(3, 0, 3, 10, 5, 50))

    def test_bytes_count_the_old_message_out(self) -> None:
        """100 bytes held, 40 of them the topic's: 60 fit in its place, 61 do not; a new topic of 1 does not."""
        self.assertIsNone(over_bound(0, 100, 3, 100, 40, 40))
        self.assertIsNone(over_bound(0, 100, 3, 100, 40, 30))
        self.assertIsNone(over_bound(0, 120, 3, 100, 40, 60))
        self.assertEqual(over_bound(0, 120, 3, 100, 40, 61), BY_BYTES)
        self.assertEqual(over_bound(0, 100, 3, 100, None, 1), BY_BYTES)

    def test_a_smaller_replacement_always_fits(self) -> None:
        """A store over its bytes (restored under a larger bound, or the gateway's own) still
        takes a message no larger than the one it replaces."""
        self.assertIsNone(over_bound(1, 100, 5, 500, 40, 40))

    def test_zero_is_no_limit(self) -> None:
        self.assertIsNone(over_bound(0, 0, 10**9, 10**12, None, 10**9))

    def test_size_is_the_topic_bytes_and_the_payload(self) -> None:
        self.assertEqual(retained_size("a/é", b"xyz"), 4 + 3)


class RetainedLimitsTests(SynchronousTestCase):
    """A broker with ``max_retained_messages: 3`` and ``max_retained_bytes: 100``; a publisher
    ``dev`` and a subscriber ``sub`` to ``#`` on it."""

    def setUp(self) -> None:
        self.clock = Clock()
        loop = asyncio.new_event_loop()  # amqtt's plugin manager wants one; nothing runs on it here
        self.addCleanup(loop.close)
        self.broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), self.clock,
                                    max_retained_messages=COUNT, max_retained_bytes=BYTES)
        self.handler, self.transport = attached(self.broker, "dev", self.clock)
        # (attached skips the CONNECT: the framer counts one, the connection keeps its id, as after a real one)
        self.handler.connection.framer.feed(packets.connect("dev", 30, True))
        self.handler.connection.client_id = "dev"
        self.sub, self.sub_transport = attached(self.broker, "sub", self.clock)
        self.broker.subscribe_session(self.sub.session, "#", 1)
        self.events = capture_log_events(self)

    def publish(self, topic: str, payload: bytes, packet_id: int) -> bytes:
        """``dev`` publishes ``payload`` retained at QoS 1; what it was answered in that turn."""
        self.transport.clear()
        self.handler.connection.dataReceived(raw.publish(topic, payload, 1, packet_id=packet_id, retain=True))
        self.clock.advance(0)
        return self.transport.value()

    def logged(self, text: str) -> list[str]:
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def test_past_the_count_delivered_acknowledged_not_retained(self) -> None:
        """Three topics fill ``max_retained_messages``; a fourth is delivered to the subscriber
        and acknowledged (PUBACK), and not retained; counted and logged with the client id and
        the limit. Before, every topic was kept: the store had no bound."""
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        self.sub_transport.clear()
        answer = self.publish("t/new", b"y", 9)
        self.assertEqual(answer, packets.ack(packets.PUBACK, 9))
        self.assertIn(b"t/new", self.sub_transport.value())
        self.assertEqual(sorted(self.broker.retained), ["t/0", "t/1", "t/2"])
        self.assertEqual(self.broker.retained_limits.refused, {BY_COUNT: 1, BY_BYTES: 0})
        [line] = self.logged("not retaining")
        self.assertIn("not retaining the message of 'dev' on t/new: the broker holds 3 retained messages, "
                      "max_retained_messages is 3; it was delivered and acknowledged all the same", line)

    def test_the_lines_are_the_ones_broker_md_quotes(self) -> None:
        """docs/broker.md quotes the refusal's line as it is logged: a first line without a count
        (it showed "(1 refused since the last such line; ...)", a line the gateway never writes),
        and a line standing for more refusals with their count, itself included."""
        page = " ".join((Path(__file__).resolve().parent.parent.parent / "docs" / "broker.md").read_text().split())
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        self.publish("t/new", b"y", 9)
        [first] = self.logged("not retaining")
        quoted = "all the same (logged at most once every 10 s while they go on)`"
        self.assertIn(quoted, page)
        self.assertTrue(first.endswith(quoted[len("all the same "):-1]), first)
        self.publish("t/new2", b"y", 10)
        self.clock.advance(10)
        self.publish("t/new3", b"y", 11)
        later = self.logged("not retaining")[-1]
        counted = "(2 refused since the last such line; logged at most once every 10 s while they go on)"
        self.assertTrue(later.endswith(counted), later)
        self.assertIn(counted.replace("2 refused", "3 refused"), page)

    def test_replacing_and_clearing_are_always_allowed(self) -> None:
        """At the count, a topic's message is replaced, and an empty payload clears it; the
        topic then freed takes a new one."""
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        self.publish("t/1", b"newer", 5)
        self.assertEqual(self.broker.retained["t/1"].payload, b"newer")
        self.publish("t/1", b"", 6)
        self.publish("t/9", b"z", 7)
        self.assertEqual(sorted(self.broker.retained), ["t/0", "t/2", "t/9"])
        self.assertEqual(self.broker.retained_limits.refused, {BY_COUNT: 0, BY_BYTES: 0})
        self.assertEqual(self.broker.retained_bytes, sum(retained_size(t, m.payload)
                                                         for t, m in self.broker.retained.items()))

    def test_past_the_bytes_a_new_topic_is_not_retained(self) -> None:
        """``a`` holds 1 + 90 bytes of the 100; ``b`` with 9 more is one byte over: delivered,
        acknowledged, not retained, counted under ``max_retained_bytes``."""
        self.publish("a", b"x" * 90, 1)
        self.assertEqual(self.broker.retained_bytes, 91)
        self.assertEqual(self.publish("b", b"y" * 9, 2), packets.ack(packets.PUBACK, 2))
        self.assertEqual(list(self.broker.retained), ["a"])
        self.assertEqual(self.broker.retained_limits.refused, {BY_COUNT: 0, BY_BYTES: 1})
        [line] = self.logged("not retaining")
        self.assertIn("its 10 bytes (topic and payload) would take the retained messages' 91 bytes past "
                      "max_retained_bytes (100)", line)

    def test_a_larger_replacement_past_the_bytes_removes_the_stale_one(self) -> None:
        """``a`` grows past the bytes: the new message is not retained, and the older one is
        removed, so that no new subscriber gets a message older than the topic's last."""
        self.publish("a", b"x" * 50, 1)
        self.publish("b", b"y" * 40, 2)
        self.publish("a", b"z" * 60, 3)
        self.assertEqual(list(self.broker.retained), ["b"])
        self.assertEqual(self.broker.retained_bytes, 41)
        [line] = self.logged("not retaining")
        self.assertIn("the topic's older retained message is removed", line)

    def test_one_line_per_cause_then_a_count(self) -> None:
        """A flood over both bounds: one line for each cause, then nothing for 10 s; the next
        line counts those in between."""
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        for n in range(5):
            self.publish(f"u/{n}", b"y", 10 + n)
        self.publish("t/0", b"z" * 200, 20)
        self.publish("t/1", b"z" * 200, 21)
        self.assertEqual(len(self.logged("max_retained_messages is")), 1)
        self.assertEqual(len(self.logged("past max_retained_bytes")), 1)
        self.clock.advance(10)
        self.publish("t/2", b"z" * 200, 30)
        [_, line] = self.logged("past max_retained_bytes")
        self.assertIn("2 refused since the last such line", line)
        self.assertEqual(self.broker.retained_limits.refused, {BY_COUNT: 5, BY_BYTES: 3})

    def test_the_gateways_own_retained_messages_are_not_refused(self) -> None:
        """At the count, the gateway's own status (the bus) and a plugin's ``retain_message`` are
        kept, and counted: a client cannot hide a link's state by filling the store."""
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        self.broker.bus.attach(self.broker)
        self.successResultOf(self.broker.bus.publish("edge/connection/remote/status", b"{}", 1, True))
        self.broker.plugin_publish("plugin/t", b"p", 0, True)
        self.assertEqual(len(self.broker.retained), COUNT + 2)
        self.assertEqual(self.broker.retained_limits.refused, {BY_COUNT: 0, BY_BYTES: 0})

    def test_the_gateways_own_retained_messages_do_not_count(self) -> None:
        """The gateway's status, a plugin's ``retain_message`` and a link's cloud command kept
        first, the clients still have all of ``max_retained_messages``; a fourth client topic
        is refused. Before, the gateway's own counted: the clients got one topic, and a
        restart dropped what the running broker had accepted."""
        self.broker.bus.attach(self.broker)
        self.successResultOf(self.broker.bus.publish("edge/connection/remote/status", b"{}", 1, True))
        self.broker.plugin_publish("plugin/t", b"p", 0, True)
        self.broker.publish_internal("command//d/req/1/x", b"c", 1, True, link="cloud")
        for n in range(COUNT + 1):
            self.publish(f"t/{n}", b"x", n + 1)
        self.assertEqual(sorted(self.broker.retained), ["command//d/req/1/x", "edge/connection/remote/status",
                                                        "plugin/t", "t/0", "t/1", "t/2"])
        self.assertEqual(self.broker.retained_limits.refused, {BY_COUNT: 1, BY_BYTES: 0})
        self.assertEqual((self.broker.clients_retained_count, self.broker.clients_retained_bytes), (3, 12))

    def test_a_client_replacing_the_gateways_own_needs_room(self) -> None:
        """A client's message to a topic the gateway retained on is a new client topic: at the
        count it is refused (and the older one removed, no longer the topic's last); the
        gateway's own message replacing a client's frees the client's room."""
        self.broker.plugin_publish("own", b"p", 0, True)
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        self.publish("own", b"c", 7)
        self.assertNotIn("own", self.broker.retained)
        [line] = self.logged("not retaining")  # (it says so: before, the removal went untold)
        self.assertIn("max_retained_messages is 3; the topic's older retained message is removed", line)
        self.broker.plugin_publish("t/0", b"p", 0, True)
        self.publish("t/9", b"y", 8)
        self.assertEqual(sorted(self.broker.retained), ["t/0", "t/1", "t/2", "t/9"])
        self.assertEqual(self.broker.retained_own, {"t/0"})
        self.assertEqual(self.broker.retained_limits.refused, {BY_COUNT: 1, BY_BYTES: 0})

    def test_a_restart_keeps_what_the_running_broker_kept(self) -> None:
        """The store full of the clients' messages and the gateway's own (one in the checkpoint,
        one logged after it): the checkpoint read and the log replayed under the same bounds
        drop nothing, and the restored broker bounds the clients' messages as before. Before,
        every restart dropped some and logged 'saved state holds more retained messages'."""
        self.broker.plugin_publish("plugin/t", b"p", 0, True)
        self.broker.publish_internal("command//d/req/1/x", b"c", 1, True, link="cloud")
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        text = b"".join(encoded_parts(checkpoint_content(self.broker)))
        budget = RetainedBudget(COUNT, BYTES)
        state = read_checkpoint(io.BytesIO(text), budget)
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        restored = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), Clock(), max_retained_messages=COUNT,
                                 max_retained_bytes=BYTES)
        restore(restored, state)
        records = [Record("edge/gateway/reports/x", b"r", qos=1,
                          headers=(("op", "retain"), ("n", "1"), ("client", ""), ("own", "1")))]
        replay(restored, records, 0, budget)
        self.assertEqual(budget.dropped, 0)
        self.assertEqual(sorted(restored.retained), ["command//d/req/1/x", "edge/gateway/reports/x", "plugin/t",
                                                     "t/0", "t/1", "t/2"])
        self.assertEqual((restored.retained_own, restored.retained_links),
                         ({"plugin/t", "edge/gateway/reports/x"}, {"command//d/req/1/x": "cloud"}))
        self.assertEqual(restored.clients_retained_count, COUNT)

    def test_a_version_counting_every_retained_message_keeps_the_clients(self) -> None:
        """Rolled back to a version before ``retained_own`` (it skips that member and counts
        every retained message in the bounds, in the order saved): the store full of the
        clients' messages, the gateway's own and a link's kept first, the clients' are all kept
        and the others dropped (they are published again by the gateway and the cloud). Before,
        the checkpoint listed them in the order kept: that version dropped two clients'
        acknowledged messages, ``t/1`` and ``t/2``."""
        self.broker.plugin_publish("plugin/t", b"p", 0, True)
        self.broker.publish_internal("command//d/req/1/x", b"c", 1, True, link="cloud")
        for n in range(COUNT):
            self.publish(f"t/{n}", b"x", n + 1)
        text = json.loads(b"".join(encoded_parts(checkpoint_content(self.broker))))
        del text["retained_own"], text["retained_links"]  # (what such a version reads: nothing of whose)
        budget = RetainedBudget(COUNT, BYTES)
        state = read_checkpoint(io.BytesIO(json.dumps(text).encode()), budget)
        self.assertEqual([row[0] for row in state["retained"]], ["t/0", "t/1", "t/2"])
        self.assertEqual(budget.dropped_topics, ["plugin/t", "command//d/req/1/x"])


class TalliesTests(SynchronousTestCase):
    """The clients' retained messages' count and bytes, kept as they change (what the bounds
    read), against the same taken from scratch after every change."""

    def setUp(self) -> None:
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        self.broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), Clock(), max_retained_messages=COUNT,
                                    max_retained_bytes=BYTES)

    def test_every_change_of_whose_keeps_the_tallies_and_the_bounds(self) -> None:
        """2,000 retained PUBLISHes from a client, the gateway itself and a link, on topics of
        one and two bytes a character, new, replacing (smaller, larger), clearing: the tallies
        are those of the clients' messages held, and each message is refused exactly when the
        bounds, computed from scratch with each message's whole size, say so."""
        rng = random.Random(22)
        held: dict[str, tuple[bytes, str]] = {}  # topic -> (payload, whose: "client", "own" or a link)
        refused = {BY_COUNT: 0, BY_BYTES: 0}
        for _ in range(2000):
            topic = rng.choice(["a", "b/é", "c/éé", "d", "e/ü/x"])
            payload = b"p" * rng.choice([0, 1, 5, 20, 40, 70])
            whose = rng.choice(["client", "client", "client", "own", "cloud"])
            self.broker.retain_now(topic, payload, 0, "dev" if whose == "client" else None,
                                   "cloud" if whose == "cloud" else "")
            clients = {t: p for t, (p, w) in held.items() if w == "client"}
            if payload and whose == "client":
                old = clients.get(topic)
                cause = over_bound(COUNT, BYTES, len(clients), sum(retained_size(t, p) for t, p in clients.items()),
                                   None if old is None else retained_size(topic, old), retained_size(topic, payload))
                if cause is not None:
                    refused[cause] += 1
                    payload = b""
            if payload:
                held[topic] = (payload, whose)
            else:
                held.pop(topic, None)
            clients = {t: p for t, (p, w) in held.items() if w == "client"}
            broker = self.broker
            self.assertEqual({t: m.payload for t, m in broker.retained.items()}, {t: p for t, (p, _) in held.items()})
            self.assertEqual((broker.retained_own, broker.retained_links),
                             ({t for t, (_, w) in held.items() if w == "own"},
                              {t: w for t, (_, w) in held.items() if w == "cloud"}))
            self.assertEqual((broker.clients_retained_count, broker.clients_retained_bytes),
                             (len(clients), sum(retained_size(t, p) for t, p in clients.items())))
            self.assertEqual(broker.retained_bytes, sum(retained_size(t, p) for t, (p, _) in held.items()))
            self.assertEqual(broker.retained_limits.refused, refused)
        self.assertTrue(all(refused.values()))  # (both bounds were reached)

    def test_a_clients_replacement_does_not_measure_the_topic_again(self) -> None:
        """A client's message replacing its own (a device's status kept up to date) is bounded
        and counted from the payloads' sizes alone: the topic's UTF-8 bytes are not encoded
        again (they were twice a replacement, a quarter of its cost)."""
        self.broker.retain_now("devices/é/status", b"x" * 10, 0, "dev")
        measured: list[str] = []

        def size(topic: str, payload: bytes) -> int:
            measured.append(topic)
            return retained_size(topic, payload)

        self.patch(routing, "retained_size", size)
        self.broker.retain_now("devices/é/status", b"y" * 12, 0, "dev")
        self.assertEqual(measured, [])
        self.assertEqual((self.broker.clients_retained_count, self.broker.clients_retained_bytes), (1, 17 + 12))


def checkpoint(retained: list[tuple[str, bytes]]) -> bytes:
    """A checkpoint's text holding ``retained`` (QoS 1 each) and no session."""
    return json.dumps({"format": 1, "log_through": 0, "sessions": [],
                       "retained": [[t, base64.b64encode(p).decode(), 1] for t, p in retained]}).encode()


class RestoredOverTheBoundsTests(SynchronousTestCase):
    """A saved state holding more than the bounds: what fits is kept, in the order saved."""

    def test_the_checkpoint_keeps_what_fits(self) -> None:
        """Four messages of 21, 81, 31 and 11 bytes with 100 bytes and 3 messages allowed: the
        second does not fit, the third and the fourth do (the count then stops nothing more);
        the dropped one is counted and named. The whole state was kept before, whatever its size."""
        budget = RetainedBudget(3, 100)
        state = read_checkpoint(io.BytesIO(checkpoint([("a", b"x" * 20), ("b", b"x" * 80), ("c", b"x" * 30),
                                                       ("d", b"x" * 10)])), budget)
        self.assertEqual([row[0] for row in state["retained"]], ["a", "c", "d"])
        self.assertEqual((budget.dropped, budget.dropped_bytes, budget.dropped_topics), (1, 81, ["b"]))

    def test_without_a_budget_all_are_kept(self) -> None:
        state = read_checkpoint(io.BytesIO(checkpoint([("a", b"x" * 20), ("b", b"x" * 60)])))
        self.assertEqual(len(state["retained"]), 2)

    def test_the_state_log_replayed_keeps_the_bounds(self) -> None:
        """Logged after the checkpoint: a new topic past the count is dropped, a replacement
        kept; a larger one past the bytes drops the topic's older message too."""
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), Clock(), max_retained_messages=2,
                               max_retained_bytes=50)
        records = [Record(topic, payload, qos=1, headers=(("op", "retain"), ("n", str(n))))
                   for n, (topic, payload) in enumerate([("a", b"1"), ("b", b"2"), ("c", b"3"), ("a", b"11"),
                                                         ("b", b"x" * 60)], start=1)]
        budget = RetainedBudget(2, 50)
        self.assertEqual(replay(broker, records, 0, budget), 5)
        self.assertEqual({t: m.payload for t, m in broker.retained.items()}, {"a": b"11"})
        self.assertEqual((budget.dropped, budget.dropped_topics), (2, ["c", "b"]))


class SettingsTests(SynchronousTestCase):
    """The two keys in the ``broker:`` section."""

    def test_defaults(self) -> None:
        settings = BrokerSettings()
        self.assertEqual((settings.max_retained_messages, settings.max_retained_bytes),
                         (DEFAULT_MAX_RETAINED_MESSAGES, DEFAULT_MAX_RETAINED_BYTES))
        self.assertEqual((DEFAULT_MAX_RETAINED_MESSAGES, DEFAULT_MAX_RETAINED_BYTES), (10_000, 16 << 20))

    def test_zero_is_taken_and_a_negative_number_is_an_error(self) -> None:
        settings = broker_settings({"max_retained_messages": 0, "max-retained-bytes": 0})
        self.assertEqual((settings.max_retained_messages, settings.max_retained_bytes), (0, 0))
        with self.assertRaises(ConfigError) as caught:
            broker_settings({"max_retained_messages": -1, "max_retained_bytes": 1.5})
        self.assertIn("broker.max_retained_messages: must be a whole number from 0 up, not -1", str(caught.exception))
        self.assertRegex(str(caught.exception), r"broker\.max_retained_bytes: must be a whole number from 0 up, not .*1\.5")


class SavedStateOverTheBoundsTests(TestCase):
    """A broker service started on a checkpoint holding more than its bounds."""

    @inlineCallbacks
    def test_a_start_over_the_bounds_keeps_what_fits_and_says_what_went(self):
        """Five saved retained messages, ``max_retained_messages: 2``: the service starts with
        the first two, one warning names the rest and the snapshot counts them; the checkpoint
        holds the two. Before, all came back, however many and large (a
        gateway in a memory limit was killed at every start)."""
        state_dir = Path(self.mktemp())
        (state_dir / "broker").mkdir(parents=True)
        (state_dir / "broker" / "state.json").write_bytes(checkpoint([(f"r/{n}", b"v") for n in range(5)]))
        events = capture_log_events(self)
        service = yield start_broker(self, reactor, {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
                                                     "plugins": ANONYMOUS, "max_retained_messages": 2},
                                     state_dir=state_dir)
        self.assertEqual(list(service.broker.retained), ["r/0", "r/1"])
        [warning] = [formatEvent(e) for e in events if "holds more retained messages" in formatEvent(e)]
        self.assertIn("max_retained_messages (2) and max_retained_bytes (16777216) let it keep: kept 2 (8 bytes), "
                      "dropped 3 (12 bytes: r/2, r/3, r/4)", warning)
        snapshot = service.snapshot()
        self.assertEqual((snapshot.retained, snapshot.retained_bytes, snapshot.retained_dropped_at_start), (2, 8, 3))
        yield service.stopService()  # (its last checkpoint: what the start kept)
        saved = json.loads((state_dir / "broker" / "state.json").read_text())
        self.assertEqual([row[0] for row in saved["retained"]], ["r/0", "r/1"])
