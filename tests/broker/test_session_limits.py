"""Sessions are bounded: clean ones end with their connection, persistent ones expire and are capped.

The bookkeeping (:class:`OfflineSessions`) and the broker's sweep run on ``task.Clock``;
the growth test connects hundreds of real clients, each once with a new client id, and
counts what the broker holds afterwards: the same, whatever the number of clients.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.clientsession import ClientSession
from gateway.broker.core import GatewayBroker
from gateway.broker.bus import LocalBus
from gateway.broker.handler import SessionHandler
from gateway.broker.service import current_loop
from gateway.broker.sessions import OfflineSessions, sweep_interval
from gateway.broker.settings import parse_duration
from tests.broker import packets
from tests.broker.harness import ANONYMOUS, broker_settings, eventually, port_of, start_broker
from tests.broker.mqttraw import scripted_connect
from tests.steppingclock import SteppingClock

PERSISTENT = 0x00  # CONNECT flags: CleanSession=0


class OfflineSessionsTests(SynchronousTestCase):
    """Expiry after the idle time, the cap longest-offline first, reconnects forgiven."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.offline = OfflineSessions(expiration=100, max_sessions=3, clock=self.clock.seconds)

    def test_expiry(self) -> None:
        self.offline.went_offline("a")
        self.clock.advance(50)
        self.offline.went_offline("b")
        self.assertEqual(self.offline.due(), [])
        self.clock.advance(50)
        self.assertEqual(self.offline.due(), ["a"])
        self.assertEqual(self.offline.idle_for("b"), 50)
        self.clock.advance(50)
        self.assertEqual(self.offline.due(), ["b"])
        self.assertEqual((self.offline.expired, self.offline.evicted, len(self.offline)), (2, 0, 0))

    def test_reconnect_restarts_idle_time(self) -> None:
        self.offline.went_offline("a")
        self.clock.advance(90)
        self.offline.came_back("a")
        self.clock.advance(90)
        self.offline.went_offline("a")
        self.clock.advance(90)
        self.assertEqual(self.offline.due(), [])
        self.assertEqual(self.offline.idle_for("a"), 90)

    def test_cap_longest_offline_first(self) -> None:
        for name in "abcde":
            self.offline.went_offline(name)
            self.clock.advance(1)
        self.offline.went_offline("a")  # offline again: now the most recent
        self.assertEqual(self.offline.due(), ["b", "c"])
        self.assertEqual((self.offline.expired, self.offline.evicted), (0, 2))
        self.assertEqual(list(self.offline._since), ["d", "e", "a"])

    def test_no_expiry(self) -> None:
        offline = OfflineSessions(expiration=0, max_sessions=10, clock=self.clock.seconds)
        offline.went_offline("a")
        self.clock.advance(10 ** 9)
        self.assertEqual(offline.due(), [])

    def test_sweep_interval(self) -> None:
        self.assertEqual([sweep_interval(e) for e in (1, 100, 7 * 86400)], [1.0, 10.0, 60.0])

    def test_durations(self) -> None:
        """mosquitto's duration syntax (m is a month), or seconds."""
        self.assertEqual([parse_duration(v) for v in (90, 1.5, "30s", "2h", "7d", "1w", "1m", "1y", 0)],
                         [90, 1.5, 30, 7200, 7 * 86400, 7 * 86400, 30 * 86400, 365 * 86400, 0])
        for bad in ("", "5x", "h", -1, True, "1.5h", None, float("nan"), float("inf"), " 2h", "+2h"):
            self.assertRaises(ValueError, parse_duration, bad)

    def test_durations_of_ascii_digits(self) -> None:
        """Only ASCII digits make a number: ``١h`` (an Arabic-Indic one) is no hour, and ``²h``
        is refused with the rule, not with a message from ``int``."""
        for bad in ("\u0661h", "\u00b2h", "\uff11d"):
            with self.assertRaises(ValueError) as raised:
                parse_duration(bad)
            self.assertIn("not a duration (seconds, or a whole number followed by s, h, d, w, m or y)",
                          str(raised.exception))


class BrokerExpiryTests(TestCase):
    """The broker forgets expired offline sessions on its own clock (no sockets)."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.clock = Clock()
        settings = broker_settings({"plugins": ANONYMOUS})
        self.broker = GatewayBroker(AmqttPlugins(settings.amqtt, current_loop()), LocalBus(), self.clock,
                                    persistent_client_expiration=100, max_offline_sessions=3)
        yield self.broker.start()
        self.addCleanup(self.broker.shutdown)

    def offline_session(self, client_id: str, topic_filter: str) -> ClientSession:
        """An offline persistent session subscribed to ``topic_filter``, as restored from disk."""
        session = self.broker.create_offline_session(client_id)
        self.broker.subscribe_session(session, topic_filter, 1)
        return session

    def test_expired_sessions_forgotten(self) -> None:
        """After the idle time (and the sweep after it) the session, its subscriptions and its queue are gone."""
        self.offline_session("old", "a/#")
        self.clock.advance(50)
        self.offline_session("young", "b/#")
        self.broker.route(None, "a/x", b"queued", 1, False)
        self.assertEqual(len(self.broker.outbox_for(self.broker.sessions["old"])), 1)
        self.clock.advance(50 + sweep_interval(100))
        self.assertEqual(list(self.broker.sessions), ["young"])
        self.assertEqual(list(self.broker.subscriptions), ["b/#"])
        self.assertEqual(self.broker.offline.expired, 1)
        self.clock.advance(100)
        self.assertEqual(self.broker.sessions, {})
        self.assertEqual(self.broker.subscriptions, {})
        self.assertEqual(len(self.broker.offline), 0)
        self.assertEqual(self.broker.offline.expired, 2)

    @inlineCallbacks
    def test_a_step_of_the_wall_clock_expires_nothing(self) -> Any:
        """NTP steps the clock forward by years: an offline session (and the messages queued
        for it, acknowledged to their publisher) is not ended at the next sweep, as every one
        was; it expires after its idle time as before."""
        clock = SteppingClock()
        settings = broker_settings({"plugins": ANONYMOUS})
        self.broker = GatewayBroker(AmqttPlugins(settings.amqtt, current_loop()), LocalBus(), clock,
                                    persistent_client_expiration=100, max_offline_sessions=3)
        yield self.broker.start()
        self.addCleanup(self.broker.shutdown)
        self.offline_session("away", "a/#")
        self.broker.route(None, "a/x", b"queued", 1, False)
        clock.step(56 * 365 * 86400.0)
        clock.advance(sweep_interval(100))
        self.assertEqual(list(self.broker.sessions), ["away"])
        self.assertEqual(len(self.broker.outbox_for(self.broker.sessions["away"])), 1)
        clock.advance(100)
        self.assertEqual(self.broker.sessions, {})

    def test_cap(self) -> None:
        """Past max_offline_sessions the longest offline go first, at the next look."""
        for index in range(5):
            self.offline_session(f"c{index}", f"t/{index}")
            self.clock.advance(1)
        self.assertEqual(self.broker.end_due_sessions(), ["c0", "c1"])
        self.assertEqual(sorted(self.broker.sessions), ["c2", "c3", "c4"])
        self.assertEqual(self.broker.offline.evicted, 2)


def client_objects() -> list[object]:
    """The session and handler objects alive now (a test keeps them: their ids stay theirs)."""
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, (ClientSession, SessionHandler))]


def counts(service: Any, earlier: list[object] | None = None) -> dict[str, int]:
    """The size of everything that could hold a gone client; session and handler objects not
    among ``earlier`` (:func:`client_objects` at the test's start: objects an earlier test of
    the run left for the collector are not this broker's)."""
    broker = service.broker
    gc.collect()
    seen = {id(o) for o in earlier or ()}
    alive = [o for o in gc.get_objects() if id(o) not in seen]
    return {
        "sessions": len(broker.sessions),
        "offline": len(broker.offline),
        "live": len(broker.live),
        "subscriptions": len(broker.subscriptions),
        "subscribers": sum(len(entries) for entries in broker.subscriptions.values()),
        "retained": len(broker.retained),
        "dropping": len(broker.queue_policy.dropping),
        "connections": sum(len(factory.connections) for factory in service.factories.values()),
        "session objects": sum(isinstance(o, ClientSession) for o in alive),
        "handler objects": sum(isinstance(o, SessionHandler) for o in alive),
    }


class NoGrowthTests(TestCase):
    """Clients that connect once each with a new client id leave nothing behind but capped offline sessions."""

    timeout = 120
    CAP = 20

    @inlineCallbacks
    def visit(self, service: Any, client_id: str, flags: int) -> Any:
        """Connect, subscribe to a filter of one's own, publish to it (QoS 1) and a retained message to a
        shared topic, leave (half of them abruptly)."""
        client = yield scripted_connect(reactor, port_of(service), True)
        client.transport.write(packets.connect(client_id, flags=flags) + packets.subscribe((f"own/{client_id}/#", 1)))
        yield client.until(lambda: len(client.others) >= 2, reactor)  # CONNACK, SUBACK
        client.transport.write(packets.publish(f"own/{client_id}/x", b"hello", qos=1, packet_id=2)
                               + packets.publish("shared/last", client_id.encode(), retain=True))
        yield client.until(lambda: len(client.others) >= 3 and client.publishes, reactor)
        if hash(client_id) % 2:
            client.transport.write(packets.DISCONNECT)
        else:
            client.transport.abortConnection()
        yield client.lost.addTimeout(10, reactor)

    @inlineCallbacks
    def wave(self, service: Any, first: int, count: int) -> Any:
        for start in range(first, first + count, 25):
            yield gatherResults([self.visit(service, f"{kind}{index}", flags)
                                 for index in range(start, min(start + 25, first + count))
                                 for kind, flags in (("clean", 0x02), ("keep", PERSISTENT))])
        yield eventually(reactor, lambda: not service.broker.live and
                         not any(factory.connections for factory in service.factories.values()))

    @inlineCallbacks
    def test_no_growth(self):
        earlier = client_objects()
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
            "max_offline_sessions": self.CAP})
        yield self.wave(service, 0, 100)
        after_first = counts(service, earlier)
        yield self.wave(service, 100, 300)
        after_second = counts(service, earlier)
        self.assertEqual(after_first, after_second)
        self.assertEqual({key: after_second[key] for key in ("sessions", "offline", "live", "subscriptions",
                                                              "subscribers", "dropping", "connections")},
                         {"sessions": self.CAP, "offline": self.CAP, "live": 0, "subscriptions": self.CAP,
                          "subscribers": self.CAP, "dropping": 0, "connections": 0})
        # the longest offline went first: what is left went offline in the last batch of 25
        self.assertTrue(all(client_id.startswith("keep") and int(client_id[4:]) >= 375
                            for client_id in service.broker.sessions), sorted(service.broker.sessions))
        # an offline session keeps nothing of its dead connection (handler, transport, buffers, timers)
        self.assertEqual(counts(service, earlier)["handler objects"], 0)
        snapshot = service.snapshot()
        self.assertEqual((snapshot.sessions, snapshot.offline_sessions, snapshot.sessions_evicted),
                         (self.CAP, self.CAP, 400 - self.CAP))

    @inlineCallbacks
    def test_refused_clients_leave_no_session(self):
        """A client whose CONNECT is refused (not authorized) leaves no session, clean or persistent."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}}})
        for index, flags in enumerate((0x02, PERSISTENT) * 10):
            client = yield scripted_connect(reactor, port_of(service), True)
            client.transport.write(packets.connect(f"intruder{index}", flags=flags))
            yield client.until(lambda: client.others, reactor)
            self.assertEqual(client.others[0], (0x20, b"\x00\x05"))
            yield client.lost.addTimeout(10, reactor)
        yield eventually(reactor, lambda: not any(f.connections for f in service.factories.values()))
        self.assertEqual(service.broker.sessions, {})
        self.assertEqual(len(service.broker.offline), 0)


class CleanWaveTests(TestCase):
    """A wave of clean-session clients that connect, stay together, subscribe past their limit,
    overflow their queues and leave (half abruptly) leaves the broker holding nothing for any
    of them: no per-client entry, no subscription, no topic-tree node, no cached route, no
    connection, handler or session object (``bench/sessions.py`` measures the memory)."""

    timeout = 120
    CLIENTS = 150

    @inlineCallbacks
    def join(self, service: Any, client_id: str) -> Any:
        """Connect with CleanSession=1 and subscribe to a filter of one's own with a wildcard, to one
        without, and to one more than ``max_subscriptions`` allows (refused, counted per client)."""
        client = yield scripted_connect(reactor, port_of(service), True)
        client.transport.write(packets.connect(client_id, flags=0x02) + packets.subscribe(
            (f"own/{client_id}/#", 1), (f"own/{client_id}/x", 1), (f"own/{client_id}/y", 1)))
        yield client.until(lambda: len(client.others) >= 2, reactor)  # CONNACK, SUBACK
        return client

    @inlineCallbacks
    def test_nothing_left_per_client(self) -> Any:
        earlier = client_objects()
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
            "max_subscriptions": 2, "max_inflight_messages": 1, "max_queued_messages": 1})
        broker = service.broker
        clients = []
        for start in range(0, self.CLIENTS, 50):
            clients += (yield gatherResults([self.join(service, f"wave{index}")
                                             for index in range(start, start + 50)]))
        self.assertEqual(len(broker.live), self.CLIENTS)
        self.assertEqual(len(broker.limits.refused_by_client), self.CLIENTS)
        # every client is sent more than its queue holds (it does not read): per-client drop counts
        for index in range(self.CLIENTS):
            for _ in range(3):
                broker.route(None, f"own/wave{index}/x", b"m", 1, False)
        self.assertTrue(broker.queue_policy.dropping)
        for index, client in enumerate(clients):
            if index % 2:
                client.transport.write(packets.DISCONNECT)
            else:
                client.transport.abortConnection()
        yield gatherResults([client.lost.addTimeout(10, reactor) for client in clients])
        yield eventually(reactor, lambda: not broker.live and not any(
            factory.connections for factory in service.factories.values()))
        left = counts(service, earlier)
        self.assertEqual({key: value for key, value in left.items() if value}, {})
        self.assertEqual((broker.limits.refused_by_client, broker.queue_policy.dropping), ({}, {}))
        self.assertTrue(broker._wildcard_filters.empty)
        self.assertEqual(broker._routes, {})
        for factory in service.factories.values():
            self.assertEqual((factory.serving, factory.waiting, factory._written), (set(), set(), []))
        snapshot = service.snapshot()
        self.assertEqual((snapshot.sessions, snapshot.offline_sessions, snapshot.capped_clients,
                          snapshot.dropping_clients), (0, 0, (), ()))


class SettingsTests(SynchronousTestCase):
    """The ``broker:`` keys for queues and sessions: defaults, mosquitto's durations, errors by key."""

    def parse(self, **keys: Any) -> tuple[Any, list[str]]:
        from gateway.broker.settings import parse_broker_section
        from gateway.config import ErrorList

        errors = ErrorList()
        settings = parse_broker_section({"plugins": ANONYMOUS, **keys}, errors)
        return settings, errors.lines

    def test_defaults(self) -> None:
        settings, errors = self.parse()
        self.assertEqual(errors, [])
        self.assertEqual((settings.queue_overflow, settings.persistent_client_expiration,
                          settings.max_offline_sessions), ("drop_new", 7 * 86400, 1000))

    def test_values(self) -> None:
        settings, errors = self.parse(queue_overflow="drop_oldest", persistent_client_expiration="2d",
                                      max_offline_sessions=50)
        self.assertEqual(errors, [])
        self.assertEqual((settings.queue_overflow, settings.persistent_client_expiration,
                          settings.max_offline_sessions), ("drop_oldest", 2 * 86400, 50))
        self.assertNotIn("queue_overflow", settings.amqtt)

    def test_amqtt_session_expiry_interval(self) -> None:
        """amqtt's own key counts when mosquitto's is absent."""
        settings, errors = self.parse(session_expiry_interval=3600)
        self.assertEqual((errors, settings.persistent_client_expiration), ([], 3600))

    def test_errors(self) -> None:
        _, errors = self.parse(queue_overflow="drop_all", persistent_client_expiration="soon",
                               max_offline_sessions=0)
        self.assertEqual(len(errors), 3, errors)
        for key in ("queue_overflow", "persistent_client_expiration", "max_offline_sessions"):
            self.assertTrue(any(key in line for line in errors), (key, errors))

    def test_inflight_bytes(self) -> None:
        """``max_inflight_bytes`` (mosquitto's name) is 4 MiB by default, a quarter of
        ``max_queued_bytes``'s; any whole number from 0 (mosquitto's no limit), hbmqtt's dashed
        spelling too; not handed to amqtt. It was an unknown key amqtt's check refused."""
        settings, errors = self.parse()
        self.assertEqual((errors, settings.max_inflight_bytes), ([], 4 << 20))
        for value in (0, 1, 65536):
            settings, errors = self.parse(max_inflight_bytes=value)
            self.assertEqual((errors, settings.max_inflight_bytes), ([], value))
        settings, errors = self.parse(**{"max-inflight-bytes": 1000})
        self.assertEqual((errors, settings.max_inflight_bytes), ([], 1000))
        self.assertNotIn("max_inflight_bytes", settings.amqtt)

    def test_inflight_bytes_errors(self) -> None:
        """A negative, fractional, boolean or text ``max_inflight_bytes`` is an error under its
        key, saying what it takes, and the only one."""
        for value, shown in ((-1, "-1"), (1.5, "the number 1.5"), (True, "the boolean true"),
                             ("4MB", "the text '4MB'")):
            _, errors = self.parse(max_inflight_bytes=value)
            self.assertEqual(errors, [f"<defaults>: broker.max_inflight_bytes: must be a whole number from 0 up, "
                                      f"not {shown}"])

    def test_topic_levels_and_subscriptions(self) -> None:
        """``max_topic_levels`` (mosquitto's 200) and ``max_subscriptions`` (1000 a session) by
        default; any whole number from 0 (no limit), hbmqtt's dashed spelling too; not handed
        to amqtt (its config check refuses keys it does not know)."""
        settings, errors = self.parse()
        self.assertEqual((errors, settings.max_topic_levels, settings.max_subscriptions), ([], 200, 1000))
        settings, errors = self.parse(max_topic_levels=0, **{"max-subscriptions": 5})
        self.assertEqual((errors, settings.max_topic_levels, settings.max_subscriptions), ([], 0, 5))
        self.assertNotIn("max_topic_levels", settings.amqtt)
        self.assertNotIn("max_subscriptions", settings.amqtt)

    def test_topic_levels_and_subscriptions_errors(self) -> None:
        """A negative, fractional, boolean or text value is an error under its key, saying what
        it takes; so is a depth over 32768, more than a filter of 65535 bytes (``+/+/...``) can have."""
        for (levels, levels_shown), (subscriptions, shown) in (((-1, "-1"), (1.5, "the number 1.5")),
                                                               ((True, "the boolean true"), ("many", "the text 'many'")),
                                                               ((40000, "40000"), (-3, "-3"))):
            _, errors = self.parse(max_topic_levels=levels, max_subscriptions=subscriptions)
            self.assertEqual(errors, [f"<defaults>: broker.max_topic_levels: must be a whole number from 0 to 32768, "
                                      f"not {levels_shown}", "<defaults>: broker.max_subscriptions: must be a whole "
                                      f"number from 0 up, not {shown}"])
