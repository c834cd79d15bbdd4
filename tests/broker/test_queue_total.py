"""``max_queued_bytes_total``: the persistent sessions' queues bounded together (the oldest
message goes first), counted and logged as the per-session drops, durable across a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from unittest.mock import Mock

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.core import GatewayBroker
from gateway.broker.outbox import (DEFAULT_MAX_QUEUED_TOTAL, QUEUED_MESSAGE_COST, Outbox, QueuedMessage,
                                   QueuePolicy, queued_cost)
from gateway.broker.persistence import BrokerStateError, BrokerStateStore, checkpoint_content, restore
from gateway.broker.service import BrokerService
from gateway.broker.settings import BrokerSettings
from gateway.config import ConfigError
from gateway.telemetry.metrics import make_registry, render_metrics
from tests.broker.harness import broker_settings, eventually, port_of
from tests.broker.test_durable_ack import CONFIG, attached
from tests.broker.test_state_log import SECTION, StateLogCase
from tests.logevents import capture_log_events
from tests.telemetry.fakes import FakeReadSide

#: The payload size of the tests' messages: with topic ``t`` each counts 1,000 bytes in the total.
SIZE = 1000 - 1 - QUEUED_MESSAGE_COST


def message(name: str, qos: int = 1) -> QueuedMessage:
    """A message on topic ``t`` that counts 1,000 bytes in the total: ``name`` padded."""
    return QueuedMessage("t", name.encode().ljust(SIZE, b"."), qos, False)


def names(outbox: Outbox) -> list[str]:
    """The queued payloads, oldest first, without padding."""
    return [m.payload.rstrip(b".").decode() for m in outbox.messages]


class TotalBoundTests(SynchronousTestCase):
    """Queues of one policy: each session within its own bounds, the persistent ones within the total."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.policy = QueuePolicy(max_messages=100, max_bytes=1 << 20, clock=self.clock.seconds, max_total=4000)
        self.a = Outbox("a", self.policy, persistent=True)
        self.b = Outbox("b", self.policy, persistent=True)

    def test_cost_is_payload_topic_and_the_entry(self) -> None:
        self.assertEqual(queued_cost(message("x")), 1000)
        self.assertEqual(queued_cost(QueuedMessage("a/b", b"12", 1, False)), 5 + QUEUED_MESSAGE_COST)

    def test_a_topic_counts_its_utf8_bytes(self) -> None:
        """"Its payload and topic bytes": a topic outside ASCII counts its UTF-8 bytes, not its
        characters, in the cost, in the total and out of it again. Before, its characters."""
        topic = "sensors/température/温度"  # (22 characters, 27 bytes)
        queued = QueuedMessage(topic, b"12", 1, False)
        self.assertEqual(queued_cost(queued), 2 + 27 + QUEUED_MESSAGE_COST)
        self.a.push(queued)
        self.assertEqual(self.policy.total, queued_cost(queued))
        self.a.pop()
        self.a.push(queued)
        self.a.drop_oldest()
        self.assertEqual(self.policy.total, 0)

    def test_the_session_holding_the_oldest_message_loses_it(self) -> None:
        """Past the total, the oldest message of all goes, from whichever session holds it;
        the counters are the per-session drops' (per client, by QoS) plus the total's."""
        self.a.push(message("a1"))
        self.b.push(message("b1"))
        self.a.push(message("a2"))
        self.b.push(message("b2"))
        self.assertEqual(self.policy.total, 4000)
        self.assertTrue(self.b.push(message("b3")))
        self.assertTrue(self.b.push(message("b4")))
        self.assertEqual((names(self.a), names(self.b)), (["a2"], ["b2", "b3", "b4"]))
        self.assertEqual(self.policy.total, 4000)
        self.assertEqual((self.a.dropped_qos12, self.b.dropped_qos12), (1, 1))
        self.assertEqual((self.policy.dropped, self.policy.total_drops), ([0, 2, 0], 2))
        self.assertEqual(set(self.policy.dropping), {"a", "b"})

    def test_qos0_of_that_session_goes_first(self) -> None:
        """The session with the oldest message drops its own oldest QoS 0 message first, as a
        full queue does."""
        self.a.push(message("a1", 1))
        self.a.push(message("a2", 0))
        self.b.push(message("b1", 1))
        self.b.push(message("b2", 0))
        self.b.push(message("b3", 1))
        self.assertEqual((names(self.a), names(self.b)), (["a1"], ["b1", "b2", "b3"]))
        self.assertEqual(self.a.dropped_qos0, 1)
        self.assertEqual(self.policy.dropped, [1, 0, 0])

    def test_a_new_qos0_message_pushes_out_no_qos12_one(self) -> None:
        """QoS 1/2 messages outrank a new QoS 0 one: it pushes out older QoS 0 messages of the
        session holding the oldest, and is dropped itself where that would take a QoS 1/2 one."""
        self.a.push(message("a1", 0))
        for name in ("a2", "b1", "b2"):
            (self.a if name[0] == "a" else self.b).push(message(name, 1))
        self.assertTrue(self.b.push(message("b3", 0)))
        self.assertEqual((names(self.a), names(self.b)), (["a2"], ["b1", "b2", "b3"]))
        self.assertFalse(self.b.push(message("b4", 0)))
        self.assertEqual((names(self.a), names(self.b)), (["a2"], ["b1", "b2", "b3"]))
        self.assertEqual((self.a.dropped_qos0, self.b.dropped_qos0, self.policy.total_drops), (1, 1, 2))

    def test_a_refused_qos0_message_costs_no_other_session(self) -> None:
        """A new QoS 0 message refused because a QoS 1/2 message would go is refused before
        anything goes for it: the older QoS 0 message ahead of that one stays (it used to go),
        and the refusal is noted once (it was twice: two checkpoints asked, two log counts)."""
        noted: list[None] = []
        self.policy.on_total_drop = lambda: noted.append(None)
        self.a.push(message("a1", 0))
        for name in ("b1", "b2", "b3"):
            self.b.push(message(name, 1))
        late = Outbox("c", self.policy, persistent=True)
        self.assertFalse(late.push(QueuedMessage("t", b"c1".ljust(SIZE + 1000, b"."), 0, False)))  # (2,000 bytes)
        self.assertEqual((names(self.a), names(self.b), len(late)), (["a1"], ["b1", "b2", "b3"], 0))
        self.assertEqual((self.a.dropped, late.dropped_qos0, self.policy.total_drops), (0, 1, 1))
        self.assertEqual(self.policy.total, 4000)
        self.assertEqual((self.policy.dropped, len(noted)), ([1, 0, 0], 1))

    def test_a_refused_message_costs_nothing_of_its_own_queue(self) -> None:
        """A message the total refuses (a QoS 0 one that would push a QoS 1/2 one out, or one
        larger than the total) takes nothing out of its own full queue either: the QoS 0
        message its queue's bounds would have dropped for it stays."""
        events = capture_log_events(self)
        policy = QueuePolicy(max_messages=2, max_bytes=1 << 20, clock=self.clock.seconds, max_total=3000)
        full, other = Outbox("full", policy, persistent=True), Outbox("other", policy, persistent=True)
        full.push(message("f1", 0))
        full.push(message("f2", 1))
        other.push(message("o1", 1))
        self.assertFalse(full.push(QueuedMessage("t", b"f3".ljust(SIZE + 500, b"."), 0, False)))  # (1,500 bytes)
        self.assertFalse(full.push(QueuedMessage("t", b"f4".ljust(SIZE + 3000, b"."), 1, False)))  # (4,000 bytes)
        self.assertEqual((names(full), names(other)), (["f1", "f2"], ["o1"]))
        self.assertEqual((full.dropped_qos0, full.dropped_qos12, policy.total_drops, policy.total), (1, 1, 2, 3000))
        self.assertFalse([e for e in events if "is full" in formatEvent(e)])  # (nothing left it for its bounds)

    def test_clean_sessions_are_not_counted(self) -> None:
        """A clean session's queue (a connected slow subscriber) is bounded by its own bounds only."""
        clean = Outbox("c", self.policy)
        for n in range(10):
            clean.push(message(f"c{n}"))
        self.assertEqual((self.policy.total, len(clean), self.policy.total_drops), (0, 10, 0))

    def test_taking_and_clearing_give_the_room_back(self) -> None:
        for n in range(4):
            self.a.push(message(f"a{n}"))
        self.a.pop()
        self.assertEqual(self.policy.total, 3000)
        self.a.clear()
        self.assertEqual(self.policy.total, 0)
        self.b.push(message("b"))
        self.assertEqual((self.policy.total, self.policy.total_drops), (1000, 0))

    def test_a_message_larger_than_the_total_is_dropped_itself(self) -> None:
        self.a.push(message("a1"))
        big = QueuedMessage("t", b"x" * 5000, 1, False)
        self.assertFalse(self.b.push(big))
        self.assertEqual((names(self.a), len(self.b), self.policy.total_drops, self.b.dropped_qos12), (["a1"], 0, 1, 1))

    def test_zero_is_no_total_bound(self) -> None:
        self.policy.max_total = 0
        for n in range(50):
            self.a.push(message(f"a{n}"))
        self.assertEqual((len(self.a), self.policy.total_drops), (50, 0))

    def test_the_start_says_one_message_in_the_singular(self) -> None:
        """The start's warning of one message dropped says "message" (it said "1 oldest messages")."""
        events = capture_log_events(self)
        self.policy.holding = True
        for name in ("a1", "a2", "a3", "a4", "a5"):
            self.a.push(message(name))
        service = BrokerService(BrokerSettings(), self.clock)
        service._apply_queued_total(Mock(queue_policy=self.policy))  # type: ignore[arg-type]
        [line] = [formatEvent(e) for e in events if "max_queued_bytes_total (4000)" in formatEvent(e)]
        self.assertIn("dropped their 1 oldest message (from 1 session), kept 4000 bytes", line)

    def test_ended_sessions_do_not_pile_up_in_the_heap_of_heads(self) -> None:
        """Thousands of persistent sessions that queued and ended leave a bounded heap, and
        the queue that holds a message is always in it (the rebuild comes as one is listed)."""
        for n in range(5000):
            outbox = Outbox(f"s{n}", self.policy, persistent=True)
            outbox.push(message("x"))
            self.assertTrue(outbox.listed and any(entry[1] is outbox for entry in self.policy._heads), n)
            outbox.clear()
        self.assertLess(len(self.policy._heads), 200)

    def test_one_line_then_a_count_per_interval(self) -> None:
        """Drops for the total are one warning, then at most one a minute with their count; each
        says what the queues hold with the message they made room for (it said 3,000 bytes of
        4,000 here: the total before that message, which left the reader asking why any went)."""
        events = capture_log_events(self)
        for n in range(4):
            self.a.push(message(f"a{n}"))
        for n in range(3):
            self.b.push(message(f"b{n}"))
        self.clock.advance(60)
        self.b.push(message("b3"))
        lines = [formatEvent(e) for e in events if "max_queued_bytes_total" in formatEvent(e)]
        self.assertEqual(lines, [
            "the persistent sessions' queues hold 4000 bytes, max_queued_bytes_total is 4000: dropping their oldest "
            "messages (now from 'a'; 1 in all; logged at most once every 60 s "
            "while they go on)",
            "the persistent sessions' queues hold 4000 bytes, max_queued_bytes_total is 4000: dropping their oldest "
            "messages (now from 'a'; 3 dropped since the last such line, 4 in all; logged at most once every 60 s "
            "while they go on)"])
        self.assertFalse([e for e in events if "is full" in formatEvent(e)])  # (no per-session overflow line)

    def test_held_while_restoring_then_applied_oldest_first(self) -> None:
        """A start restores the queues whole, then drops what is over, oldest first."""
        self.policy.holding = True
        for n in range(3):
            self.a.push(message(f"a{n}"))
        for n in range(3):
            self.b.push(message(f"b{n}"))
        self.assertEqual(self.policy.total, 6000)
        self.assertEqual(self.policy.apply_total(), (2, 1))
        self.assertEqual((names(self.a), names(self.b)), (["a2"], ["b0", "b1", "b2"]))
        self.assertEqual((self.policy.total_drops, self.policy.dropped_at_start, self.policy.dropped), (2, 2, [0, 2, 0]))
        self.b.push(message("b3"))  # applied again from now on
        self.assertEqual(names(self.a), [])


    def test_a_start_drops_what_is_over_before_a_full_queue_takes_its_next_message(self) -> None:
        """While a start restores the queues, a queue at its own bounds takes its next message
        only once what is over the total is gone, oldest of all sessions first (the running
        broker had dropped those before it came), so that message is kept, not dropped as new;
        the start's count has those drops and the ones applied at the end, and their sessions."""
        policy = QueuePolicy(max_messages=3, max_bytes=1 << 20, clock=self.clock.seconds, max_total=3000)
        a, b = Outbox("a", policy, persistent=True), Outbox("b", policy, persistent=True)
        policy.holding = True
        for outbox, name in ((a, "a0"), (b, "b0"), (b, "b1"), (a, "a1"), (b, "b2")):
            outbox.push(message(name))
        self.assertTrue(b.push(message("b3")))  # (b held 3, the total 5,000: a0 and b0 went first)
        self.assertEqual((names(a), names(b), policy.total), (["a1"], ["b1", "b2", "b3"], 4000))
        self.assertEqual(policy.apply_total(), (3, 2))
        self.assertEqual((names(a), names(b), policy.total), (["a1"], ["b2", "b3"], 3000))
        self.assertEqual((policy.total_drops, policy.dropped_at_start, a.dropped, b.dropped), (3, 3, 1, 2))

class BrokerTotalTests(SynchronousTestCase):
    """The broker's persistent sessions, offline and connected, share the total."""

    def setUp(self) -> None:
        self.clock = Clock()
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        self.broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), self.clock, max_queued_bytes_total=3000)
        self.changed: list[None] = []
        self.broker.on_state_changed = lambda: self.changed.append(None)

    def test_a_connected_slow_subscriber_pushes_out_an_offline_sessions_oldest(self) -> None:
        """An offline session's oldest message goes for a persistent client's queue that grows
        (its socket full), and the broker's state is checkpointed for it."""
        broker = self.broker
        offline = broker.create_offline_session("away")
        for n in range(3):
            broker.queue_offline(offline, message(f"o{n}"))
        slow, _ = attached(broker, "slow", self.clock, session=broker.create_offline_session("slow"))
        broker.offline.came_back("slow")
        broker.outbox_for(slow.session).push(message("s0"))  # (what deliver does when it cannot send)
        self.changed.clear()
        broker.outbox_for(slow.session).push(message("s1"))
        self.assertEqual(names(offline.outbox), ["o2"])
        self.assertEqual(broker.queue_policy.total_drops, 2)
        self.assertTrue(self.changed)
        broker.forget_session("away")
        self.assertEqual(broker.queue_policy.total, 2000)


class RestoreOrderTests(SynchronousTestCase):
    """A checkpoint keeps the order messages came in across sessions, so a start under a lower
    bound drops the oldest of all; one written before it was kept counts the sessions offline
    the longest as holding the oldest."""

    def broker(self, max_total: int) -> GatewayBroker:
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        clock = Clock()
        clock.advance(2_000_000_100)  # (a wall clock that is set: saved offline times are believed)
        return GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), clock, max_queued_bytes_total=max_total)

    def saved(self) -> Any:
        """Two offline sessions, ``early`` offline first, fed ``l1``, ``e1``, ``l2``, ``e2``:
        the checkpoint, written and read back."""
        broker = self.broker(10_000)
        early, late = broker.create_offline_session("early"), broker.create_offline_session("late")
        for session, name in ((late, "l1"), (early, "e1"), (late, "l2"), (early, "e2")):
            broker.queue_offline(session, message(name))
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(checkpoint_content(broker))
        return store.load()

    def restored(self, state: Any, max_total: int) -> dict[str, list[str]]:
        broker = self.broker(max_total)
        broker.queue_policy.holding = True
        restore(broker, state)
        broker.queue_policy.apply_total()
        return {client_id: names(session.outbox) for client_id, session in broker.sessions.items()
                if session.outbox is not None}

    def test_the_oldest_of_all_sessions_go_first(self) -> None:
        state = self.saved()
        self.assertEqual([entry["queue_arrivals"] for entry in state["sessions"]], [[2, 4], [1, 3]])
        self.assertEqual(self.restored(state, 2000), {"early": ["e2"], "late": ["l2"]})

    def test_without_arrival_numbers_the_longest_offline_count_oldest(self) -> None:
        state = self.saved()
        for entry in state["sessions"]:
            del entry["queue_arrivals"]
        state["sessions"][0]["offline_since"] = 2_000_000_000.0  # (early, whose messages are the oldest)
        state["sessions"][1]["offline_since"] = 1_999_000_000.0  # (late, offline the longest all the same)
        self.assertEqual(self.restored(state, 2000), {"early": ["e1", "e2"], "late": []})

    def test_arrival_numbers_of_the_wrong_shape_are_refused(self) -> None:
        state = self.saved()
        state["sessions"][0]["queue_arrivals"] = [1]
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(state)
        with self.assertRaises(BrokerStateError) as caught:
            store.load()
        self.assertIn("sessions[0].queue_arrivals: not a list of arrival numbers, one for each queued message",
                      str(caught.exception))


class SettingsTests(SynchronousTestCase):
    """The ``broker.max_queued_bytes_total`` key."""

    def test_default_fits_a_small_gateway(self) -> None:
        self.assertEqual((BrokerSettings().max_queued_bytes_total, DEFAULT_MAX_QUEUED_TOTAL), (64 << 20, 64 << 20))

    def test_zero_is_taken_and_anything_else_but_a_whole_number_is_an_error(self) -> None:
        self.assertEqual(broker_settings({"max_queued_bytes_total": 0}).max_queued_bytes_total, 0)
        self.assertEqual(broker_settings({"max-queued-bytes-total": 1000}).max_queued_bytes_total, 1000)
        with self.assertRaises(ConfigError) as caught:
            broker_settings({"max_queued_bytes_total": -1})
        self.assertIn("broker.max_queued_bytes_total: must be a whole number from 0 up, not -1", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            broker_settings({"max_queued_bytes_total": "64M"})
        self.assertIn("broker.max_queued_bytes_total: must be a whole number from 0 up, not", str(caught.exception))


class RestartTests(StateLogCase):
    """A real journal and broker service: drops for the total are not undone by a restart,
    whether the state comes from the state log alone or from the checkpoint, and a start with
    a lower bound drops the oldest, says so and checkpoints without them."""

    section = {**SECTION, "max_queued_bytes_total": 4000}

    @inlineCallbacks
    def offline(self, port: int, client_id: str, topic_filter: str) -> Any:
        client = self.client(client_id=client_id, clean_session=False)
        yield client.connect(port)
        yield client.subscribe(topic_filter, 1)
        client.stop()
        yield client.disconnected()

    @inlineCallbacks
    def fed(self, filters: dict[str, str], messages: list[tuple[str, bytes]]) -> Any:
        """Start, leave offline sessions (client id -> its filter), publish ``messages`` (topic,
        payload) at QoS 1 and disconnect; fires with the journal and the broker service."""
        journal, broker = yield self.start()
        port = port_of(broker)
        for client_id, topic_filter in filters.items():
            yield self.offline(port, client_id, topic_filter)
        publisher = self.client()
        yield publisher.connect(port)
        for topic, payload in messages:
            yield publisher.publish(topic, payload, 1)
        publisher.stop()
        yield publisher.disconnected()
        return journal, broker

    @staticmethod
    def queues(service: Any) -> dict[str, list[str]]:
        return {client_id: names(session.outbox) if session.outbox is not None else []
                for client_id, session in service.broker.sessions.items() if not session.clean}

    @inlineCallbacks
    def test_drops_survive_a_crash_and_a_restart_and_a_lower_bound_drops_the_oldest(self):
        journal, broker = yield self.fed({"s1": "a", "s2": "b"}, [
            (name[0], name.encode().ljust(SIZE, b".")) for name in ("a1", "b1", "a2", "b2", "a3", "b3")])
        live = self.queues(broker)
        self.assertEqual(live, {"s1": ["a2", "a3"], "s2": ["b2", "b3"]})  # (topics "a", "b": 1,000 bytes each)
        self.assertEqual(broker.snapshot().queue_drops_over_total, 2)
        yield self.stop(journal, broker, checkpoint=False)  # killed: only the state log has them

        journal, broker = yield self.start()
        self.assertEqual(self.queues(broker), live)
        self.assertEqual(broker.broker.queue_policy.total, 4000)
        yield self.stop(journal, broker)  # the checkpoint holds them

        journal, broker = yield self.start()
        self.assertEqual(self.queues(broker), live)
        self.assertEqual(broker.snapshot().queue_drops_over_total, 0)
        yield self.stop(journal, broker)

        self.section = {**SECTION, "max_queued_bytes_total": 2500}
        events = capture_log_events(self)
        journal, broker = yield self.start()
        self.assertEqual(self.queues(broker), {"s1": ["a3"], "s2": ["b3"]})  # (the oldest of all: a2, then b2)
        [line] = [formatEvent(e) for e in events if "max_queued_bytes_total (2500)" in formatEvent(e)]
        self.assertEqual(line, "broker: the saved persistent sessions' queues hold more than max_queued_bytes_total "
                               "(2500) lets them keep: dropped their 2 oldest messages (from 2 sessions), kept 2000 "
                               "bytes; the next checkpoint holds them no more")
        snapshot = broker.snapshot()
        self.assertEqual((snapshot.queue_drops_over_total, snapshot.queued_total), (2, 2000))
        readside = FakeReadSide()
        self.patch(readside, "broker", lambda: snapshot)
        metrics = render_metrics("", make_registry(readside))[0].decode()  # type: ignore[arg-type]
        self.assertIn("\ngateway_broker_queue_total_dropped_messages_total 2.0\n", metrics)
        self.assertIn("\ngateway_broker_persistent_queued_bytes 2000.0\n", metrics)
        yield eventually(reactor, lambda: self.saved_queue_lengths() == {"s1": 1, "s2": 1})

    def saved_queue_lengths(self) -> dict[str, int]:
        """How many messages the checkpoint holds for each session."""
        path = self.state_dir / "broker" / "state.json"
        return {s["client_id"]: len(s["queue"]) for s in json.loads(path.read_text())["sessions"]} if path.exists() else {}


    @inlineCallbacks
    def test_a_message_larger_than_the_total_stays_dropped_after_a_crash(self):
        """A message larger than the total on its own is dropped itself, and a start after a
        crash replays the state log as the running broker did: with the other queued messages
        and without it. Before, the log held it, and the start dropped every older message of
        every session to make room for it, then it too."""
        journal, broker = yield self.fed({"s1": "a", "s2": "b"}, [
            ("a", b"a1".ljust(SIZE, b".")), ("b", b"b1".ljust(SIZE, b".")), ("b", b"huge".ljust(5000, b"."))])
        live = self.queues(broker)
        self.assertEqual(live, {"s1": ["a1"], "s2": ["b1"]})
        yield self.stop(journal, broker, checkpoint=False)  # killed: only the state log has them

        journal, broker = yield self.start()
        self.assertEqual(self.queues(broker), live)
        self.assertEqual(broker.snapshot().queue_drops_over_total, 0)
        yield self.stop(journal, broker)

    @inlineCallbacks
    def test_a_queue_at_its_own_bounds_comes_back_as_it_was_after_a_crash(self):
        """A queue at ``max_queued_messages`` takes a new message when the total dropped its
        oldest first; a start after a crash replays it so: the client gets the newest message,
        as it would have without the crash. Before, the replay held the total until the end, the
        queue was full when the newest came back (``drop_new``: dropped), and an older one the
        total had dropped came back instead."""
        self.section = {**SECTION, "max_queued_bytes_total": 1500, "max_queued_messages": 2}
        journal, broker = yield self.fed({"s1": "a"}, [("a", name.encode().ljust(SIZE, b"."))
                                                      for name in ("a1", "a2", "a3")])
        self.assertEqual(self.queues(broker), {"s1": ["a3"]})
        yield self.stop(journal, broker, checkpoint=False)  # killed: only the state log has them

        events = capture_log_events(self)
        journal, broker = yield self.start()
        self.assertEqual(self.queues(broker), {"s1": ["a3"]})
        [line] = [formatEvent(e) for e in events if "max_queued_bytes_total (1500)" in formatEvent(e)]
        self.assertIn("dropped their 2 oldest messages (from 1 session), kept 1000 bytes", line)  # (a1, a2: one line)
        yield self.stop(journal, broker)
