"""Routing in the broker: who gets a message, at which QoS, and which retained messages a new
subscription gets, the same as trying every filter (and every retained topic) with ``matches()``
would give, at a cost that does not grow with the number of subscriptions. A real, unstarted
:class:`GatewayBroker` with recording stand-ins for connections; task.Clock, no sockets."""

from __future__ import annotations

import gc
import sys
from collections import deque
from types import FrameType
from typing import Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.clientsession import ClientSession, Incoming
from gateway.broker.core import GatewayBroker
from gateway.broker.retainedburst import RetainedBurst
from gateway.broker.persistence import restore
from gateway.mqtt.packets import PublishTemplate
from gateway.mqtt.topics import matches
from tests.broker.test_durable_ack import make_broker
from tests.mqtt.test_topictree import FEW, filters, topics

Delivery = tuple[str, str, bytes, int, bool]


class Recorder:
    """A connected client as the router sees it, recording what it is sent."""

    def __init__(self, session: ClientSession, sent: list[Delivery]) -> None:
        self.session = session
        self.live = True
        self.inbound: deque[Incoming] | None = None
        self.sent = sent

    def plugin_view(self) -> None:
        """Not asked: no topic plugins here."""

    def acknowledge(self, message: Incoming) -> None:
        """Nothing to acknowledge here."""

    def close_unacknowledged(self) -> None:
        """Not called here."""

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool,
                template: PublishTemplate | None = None) -> None:
        """Record the delivery."""
        self.sent.append((self.session.client_id, topic, payload, qos, retain))

    def deliver_retained(self, burst: RetainedBurst) -> None:
        """Record each retained message as a delivery."""
        for topic, (payload, qos) in zip(burst.topics, burst.messages):
            self.deliver(topic, payload, min(qos, burst.granted), True)


def connected(broker: GatewayBroker, client_id: str, sent: list[Delivery]) -> Recorder:
    """A live client ``client_id`` with a clean session, recording into ``sent``."""
    session = broker.sessions[client_id] = ClientSession(client_id, clean=True)
    recorder = broker.live[client_id] = Recorder(session, sent)  # type: ignore[assignment]
    return recorder


def counted_calls(run: Callable[[], object]) -> int:
    """How many Python and C functions ``run()`` calls: a count of work that, unlike a time,
    is the same on every machine and every run. The garbage collector is off meanwhile: a
    collection falling inside ``run()`` calls the ``gc.callbacks`` (hypothesis installs one),
    which is no work of ``run()``'s, and whether one falls there depends on every allocation
    before it."""
    calls = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    enabled = gc.isenabled()
    gc.disable()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        if enabled:
            gc.enable()
    return calls


def scanned(subscriptions: list[tuple[str, str, int]], topic: str) -> dict[str, int]:
    """Client id -> highest granted QoS among its filters that match ``topic``: every filter tried
    in turn, as the router did before it had a tree. A repeated (client, filter) replaces the earlier."""
    granted = {(client_id, topic_filter): qos for client_id, topic_filter, qos in subscriptions}
    best: dict[str, int] = {}
    for (client_id, topic_filter), qos in granted.items():
        if matches(topic_filter, topic):
            best[client_id] = max(qos, best.get(client_id, 0))
    return best


class RouteTests(SynchronousTestCase):
    """A message reaches each client whose filters match its topic once, at the highest QoS it was granted."""

    def setUp(self) -> None:
        self.broker = make_broker(self, Clock())
        self.sent: list[Delivery] = []

    def routed(self, topic: str) -> dict[str, int]:
        """Client id -> QoS of the copies a QoS 2 message to ``topic`` brought (each client at most once)."""
        del self.sent[:]
        self.broker.route(None, topic, b"m", 2, False)
        got = {client_id: qos for client_id, _, _, qos, _ in self.sent}
        self.assertEqual(len(got), len(self.sent), "a client got more than one copy")
        return got

    def test_overlapping_filters_one_copy_at_the_highest_qos(self) -> None:
        """Exact and wildcard filters of one client: one copy, at the highest of their QoS (§3.3.5); an
        unsubscribe or resubscribe is seen at once, though the topic's route was cached."""
        a = connected(self.broker, "a", self.sent)
        b = connected(self.broker, "b", self.sent)
        self.broker.subscribe_session(a.session, "s/t", 0)
        self.broker.subscribe_session(a.session, "s/+", 2)
        self.broker.subscribe_session(a.session, "#", 1)
        self.broker.subscribe_session(b.session, "s/#", 1)
        self.assertEqual(self.routed("s/t"), {"a": 2, "b": 1})
        self.broker.unsubscribe_session(a.session, "s/+")
        self.assertEqual(self.routed("s/t"), {"a": 1, "b": 1})
        self.broker.subscribe_session(a.session, "s/t", 2)  # replaces the QoS 0 one (§3.8.4)
        self.assertEqual(self.routed("s/t"), {"a": 2, "b": 1})
        self.broker.unsubscribe_session(b.session, "s/#")
        self.assertEqual(self.routed("s"), {"a": 1})

    def test_the_route_cache_is_bounded(self) -> None:
        """Each new topic's subscribers are cached, ROUTE_CACHE_SIZE topics at most: the cache
        then starts again empty, and routes stay right (readside.md: ``route_cache``)."""
        from gateway.broker.routing import ROUTE_CACHE_SIZE
        a = connected(self.broker, "a", self.sent)
        self.broker.subscribe_session(a.session, "d/+/t", 1)
        for n in range(ROUTE_CACHE_SIZE + 5):
            self.broker.route(None, f"d/{n}/t", b"m", 0, False)
        self.assertEqual(self.broker.routes_cached, 5)
        self.assertEqual(len(self.sent), ROUTE_CACHE_SIZE + 5)
        self.assertEqual(self.routed("d/0/t"), {"a": 1})

    def test_dollar_topics_and_empty_levels(self) -> None:
        """``#`` and ``+/...`` do not match ``$SYS`` topics (§4.7.2); ``+`` matches an empty level."""
        a = connected(self.broker, "a", self.sent)
        self.broker.subscribe_session(a.session, "#", 0)
        self.broker.subscribe_session(a.session, "+/+", 1)
        d = connected(self.broker, "d", self.sent)
        self.broker.subscribe_session(d.session, "$SYS/#", 1)
        self.assertEqual(self.routed("$SYS/uptime"), {"d": 1})
        self.assertEqual(self.routed("/x"), {"a": 1})
        self.assertEqual(self.routed("x//y"), {"a": 0})

    def test_subscriptions_count_each_session_s_filters(self) -> None:
        """docs/readside.md: ``subscriptions`` counts every session's filters, so three clients
        on the same filter are three subscriptions (it counted the distinct filters: 1), as a
        persistent session offline; a QoS replaced is no new subscription, and an unsubscribe
        or a session that ends takes its own away."""
        a = connected(self.broker, "a", self.sent)
        b = connected(self.broker, "b", self.sent)
        away = self.broker.create_offline_session("away")
        for session in (a.session, b.session, away):
            self.broker.subscribe_session(session, "local/#", 1)
        self.broker.subscribe_session(a.session, "local/x", 0)
        self.assertEqual(self.broker.subscription_count, 4)
        self.broker.subscribe_session(b.session, "local/#", 2)
        self.assertEqual(self.broker.subscription_count, 4)
        self.broker.unsubscribe_session(a.session, "local/#")
        self.assertEqual(self.broker.subscription_count, 3)
        self.broker.forget_session("away")
        self.assertEqual(self.broker.subscription_count, 2)

    def test_ended_session_leaves_no_route(self) -> None:
        """A forgotten session's wildcard filters stop matching; an offline persistent session gets
        QoS 1/2 messages queued."""
        a = connected(self.broker, "a", self.sent)
        self.broker.subscribe_session(a.session, "x/+/z", 1)
        away = self.broker.create_offline_session("away")
        self.broker.subscribe_session(away, "x/#", 2)
        self.assertEqual(self.routed("x/y/z"), {"a": 1})
        self.assertEqual(len(self.broker.outbox_for(away)), 1)
        self.broker.forget_session("a")
        self.broker.forget_session("away")
        self.assertEqual(self.routed("x/y/z"), {})
        self.assertEqual(self.broker.subscriptions, {})
        self.assertEqual(self.broker.subscription_count, 0)

    @FEW
    @given(st.lists(st.tuples(st.sampled_from("abc"), filters, st.integers(0, 2)), max_size=10),
           st.lists(st.tuples(st.sampled_from("abc"), filters), max_size=4), st.lists(topics, min_size=1, max_size=4))
    def test_same_as_trying_every_filter(self, subscribed: list[tuple[str, str, int]],
                                         unsubscribed: list[tuple[str, str]], published: list[str]) -> None:
        """For any subscriptions of a few clients, some of them undone, and any topics, each client gets one
        copy exactly when one of its filters matches, at the highest QoS granted (the old scan's answer)."""
        self.broker = make_broker(self, Clock())
        recorders = {client_id: connected(self.broker, client_id, self.sent) for client_id in "abc"}
        for client_id, topic_filter, qos in subscribed:
            self.broker.subscribe_session(recorders[client_id].session, topic_filter, qos)
        for topic in published:  # once with the routes cached before the unsubscribes
            self.assertEqual(self.routed(topic), scanned(subscribed, topic), topic)
        for client_id, topic_filter in unsubscribed:
            self.broker.unsubscribe_session(recorders[client_id].session, topic_filter)
        left = [row for row in subscribed if (row[0], row[1]) not in set(unsubscribed)]
        for topic in published:
            self.assertEqual(self.routed(topic), scanned(left, topic), topic)

    def test_new_topics_cost_the_same_with_many_subscriptions(self) -> None:
        """Routing topics not seen before among 20,000 other clients' wildcard subscriptions makes
        as many function calls as among 20 (the tree looks only where a topic's levels lead; trying
        every filter for each topic took 10 to 20 ms per topic at 20,000)."""

        def cost(subscribers: int) -> int:
            self.broker = make_broker(self, Clock())
            del self.sent[:]
            for n in range(subscribers):
                session = self.broker.create_offline_session(f"d{n}")
                self.broker.subscribe_session(session, f"devices/d{n}/+/#", 1)
            a = connected(self.broker, "a", self.sent)
            self.broker.subscribe_session(a.session, "telemetry/#", 1)
            calls = counted_calls(lambda: [self.broker.route(None, f"telemetry/t{n}/temp", b"m", 1, False)
                                           for n in range(30)])
            self.assertEqual(len(self.sent), 30)
            return calls

        self.assertEqual(cost(20_000), cost(20))


class RetainedTests(SynchronousTestCase):
    """A new subscription gets the retained messages its filter matches, parents first."""

    def setUp(self) -> None:
        self.broker = make_broker(self, Clock())
        self.sent: list[Delivery] = []
        self.client = connected(self.broker, "a", self.sent)

    def retained_for(self, topic_filter: str) -> list[str]:
        """The topics of the retained messages a new subscription to ``topic_filter`` gets, in order."""
        del self.sent[:]
        self.broker.send_retained(topic_filter, 2, self.client)  # type: ignore[arg-type]
        self.assertTrue(all(retain for *_, retain in self.sent))
        return [topic for _, topic, _, _, _ in self.sent]

    def test_exact_and_wildcard_filters(self) -> None:
        """By name for a filter without wildcards; through the tree, parents first and siblings by
        name, for one with them; a removed message is not sent; ``$`` topics need a literal first level."""
        for topic in ["s/b", "s", "s/a/x", "s/a", "$SYS/up", "t/"]:
            self.broker.retain_now(topic, topic.encode(), 1)
        self.broker.retain_now("s/b", b"", 0)
        self.assertEqual(self.retained_for("s/a"), ["s/a"])
        self.assertEqual(self.retained_for("s/b"), [])
        self.assertEqual(self.retained_for("s/#"), ["s", "s/a", "s/a/x"])
        self.assertEqual(self.retained_for("#"), ["s", "s/a", "s/a/x", "t/"])
        self.assertEqual(self.retained_for("+/+"), ["s/a", "t/"])
        self.assertEqual(self.retained_for("+/#"), ["s", "s/a", "s/a/x", "t/"])
        self.assertEqual(self.retained_for("$SYS/+"), ["$SYS/up"])
        self.assertEqual(self.sent, [("a", "$SYS/up", b"$SYS/up", 1, True)])

    def test_restored_messages_are_found(self) -> None:
        """Retained messages restored from a checkpoint are found by a wildcard subscription too."""
        restore(self.broker, {"sessions": [], "retained": [["r/1", b"one", 1], ["r/2", b"two", 0]]})
        self.assertEqual(self.retained_for("r/+"), ["r/1", "r/2"])

    def test_new_subscriptions_cost_the_same_with_many_retained_messages(self) -> None:
        """New subscriptions (exact and wildcard) among 20,000 retained topics make as many
        function calls to find theirs as among 20 (trying every retained topic took about 10 ms
        for each at 20,000)."""

        def cost(kept: int) -> int:
            self.broker = make_broker(self, Clock())
            self.client = connected(self.broker, "a", self.sent)
            del self.sent[:]
            for n in range(kept):
                self.broker.keep_retained(f"devices/d{n}/state", b"on", 1)

            def subscribe() -> None:
                for n in range(15):
                    self.broker.send_retained(f"devices/d{n}/#", 1, self.client)  # type: ignore[arg-type]
                    self.broker.send_retained(f"devices/d{n}/state", 1, self.client)  # type: ignore[arg-type]

            calls = counted_calls(subscribe)
            self.assertEqual(len(self.sent), 30)
            return calls

        self.assertEqual(cost(20_000), cost(20))

    @FEW
    @given(st.lists(topics, max_size=10), st.lists(topics, max_size=4), filters)
    def test_same_as_trying_every_topic(self, kept: list[str], removed: list[str], topic_filter: str) -> None:
        """For any retained topics, some removed again, and any filter, the subscription gets the
        topics ``matches()`` accepts, parents first."""
        self.broker = make_broker(self, Clock())
        self.client = connected(self.broker, "a", self.sent)
        for topic in kept:
            self.broker.retain_now(topic, b"m", 1)
        for topic in removed:
            self.broker.retain_now(topic, b"", 1)
        expected = sorted({topic for topic in kept if topic not in removed and matches(topic_filter, topic)},
                          key=lambda topic: topic.split("/"))
        self.assertEqual(self.retained_for(topic_filter), expected)
