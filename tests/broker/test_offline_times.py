"""A persistent session's offline time survives a restart: saved in the checkpoint and the
state log, restored and replayed on ``task.Clock`` (no sockets), the wall clock's rules
(a time in the future, a clock not set yet, a step while running), and the broker service
ending at its start the sessions offline too long before it (real reactor, in process)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker import persistence
from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.clientsession import ClientSession
from gateway.broker.core import GatewayBroker
from gateway.broker.persistence import BrokerStateStore
from gateway.broker.retainedlimits import RetainedBudget
from gateway.broker.statelog import StateLog
from gateway.clockstep import CLOCK_SET_SINCE
from gateway.journal.record import Record
from tests.broker import packets
from tests.broker.harness import ANONYMOUS, port_of, start_broker
from tests.broker.mqttraw import scripted_connect
from tests.broker.test_durable_ack import CONFIG, attached
from tests.steppingclock import SteppingClock

#: A time of day the wall clock may read (2026-01-01 UTC).
NOW = 1767225600.0
EXPIRATION = 300.0
PERSISTENT = 0x00  # CONNECT flags: CleanSession=0
SESSION_PRESENT, NEW_SESSION = (0x20, b"\x01\x00"), (0x20, b"\x00\x00")


def clock_at(seconds: float) -> Clock:
    """A ``task.Clock`` at ``seconds`` since the epoch."""
    clock = Clock()
    clock.advance(seconds)
    return clock


class BrokerOnClockCase(SynchronousTestCase):
    """Tests of started brokers on a ``task.Clock`` (no sockets); amqtt's plugins on a loop of their own."""

    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.stopped: list[GatewayBroker] = []

    def plugins_done(self, d: Any) -> Any:
        """Run what amqtt's plugins have to do (their start or close events); ``d``'s result."""
        self.loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(self.loop)))
        return self.successResultOf(d)

    def make_broker(self, clock: Clock, max_offline_sessions: int = 100) -> GatewayBroker:
        """A started :class:`GatewayBroker` on ``clock`` keeping offline sessions :data:`EXPIRATION` s
        (shut down on cleanup, unless :meth:`stop_broker` did it)."""
        broker = GatewayBroker(AmqttPlugins(CONFIG, self.loop), LocalBus(), clock,
                               persistent_client_expiration=EXPIRATION, max_offline_sessions=max_offline_sessions)
        self.plugins_done(broker.start())
        self.addCleanup(self.stop_broker, broker)
        return broker

    def stop_broker(self, broker: GatewayBroker) -> None:
        """Shut ``broker`` down (once)."""
        if broker not in self.stopped:
            self.stopped.append(broker)
            self.plugins_done(broker.shutdown())


class RecordingStream:
    """A state stream whose appends are durable at once; keeps the records."""

    written_seq = 0

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append_then(self, record: Record, on_durable: Callable[[int], object],
                    on_failed: Callable[[Failure], object], reserved: bool = False) -> None:
        self.records.append(record)
        self.written_seq += 1
        on_durable(self.written_seq)

    def ops(self) -> list[tuple[str, str]]:
        """``(op, client)`` of each record."""
        return [(dict(r.headers)["op"], dict(r.headers)["client"]) for r in self.records]


def offline_record(n: int, client_id: str, at: float, op: str = "offline") -> Record:
    """A state-log record of ``client_id`` going offline (or coming back) at ``at``."""
    return Record("", b"", 0, False, at, (("op", op), ("n", str(n)), ("client", client_id)))


class CheckpointTests(BrokerOnClockCase):
    """The checkpoint saves when each offline session's client left, and a restore counts from it."""

    def test_offline_time_round_trip(self) -> None:
        """A session offline for 100 s when saved, restored 150 s later, has been offline 250 s:
        it expires 50 s later, counted as expired; one saved as offline for 10 s stays."""
        clock = clock_at(NOW)
        broker = self.make_broker(clock)
        broker.create_offline_session("old")
        clock.advance(90)
        broker.create_offline_session("young")
        clock.advance(10)
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(broker))
        self.assertEqual({e["client_id"]: e["offline_since"] for e in (store.load() or {})["sessions"]},
                         {"old": NOW, "young": NOW + 90})

        later = clock_at(NOW + 250)
        again = self.make_broker(later)
        persistence.restore(again, store.load() or {})
        self.assertEqual(again.offline.idle_for("old"), 250)
        self.assertEqual(again.offline.idle_for("young"), 160)
        self.assertEqual(again.end_due_sessions(), [])
        later.advance(50)  # (the broker's sweep looks meanwhile)
        self.assertEqual((list(again.sessions), again.offline.expired), (["young"], 1))

    def test_offline_longer_than_the_expiration_is_due_at_once(self) -> None:
        """Restored after more than the expiration (the gateway was off for it), a session is
        due at the first look, counted as expired; before, it was kept another expiration."""
        clock = clock_at(NOW)
        broker = self.make_broker(clock)
        broker.create_offline_session("gone")
        state = persistence.checkpoint_content(broker)
        again = self.make_broker(clock_at(NOW + EXPIRATION + 1))
        persistence.restore(again, state)
        self.assertEqual(again.end_due_sessions(), ["gone"])
        self.assertEqual((again.sessions, again.offline.expired, again.offline.evicted), ({}, 1, 0))

    def test_the_cap_evicts_the_longest_offline_by_the_saved_times(self) -> None:
        """Over max_offline_sessions, the sessions offline longest go first, by the saved times,
        whatever their order in the file."""
        clock = clock_at(NOW)
        state = {"sessions": [{"client_id": name, "username": None, "offline_since": NOW - idle,
                               "subscriptions": [], "queue": [], "inflight": [], "inflight_in": []}
                              for name, idle in (("b", 20), ("c", 10), ("a", 30), ("d", 0))],
                 "retained": []}
        broker = self.make_broker(clock, max_offline_sessions=2)
        persistence.restore(broker, state)
        self.assertEqual(broker.end_due_sessions(), ["a", "b"])
        self.assertEqual(sorted(broker.sessions), ["c", "d"])
        self.assertEqual(broker.offline.evicted, 2)

    def test_the_ends_are_logged_as_broker_md_says(self) -> None:
        """Sessions that end are logged at once, then at most once a minute: one that ends
        within a minute of the last line is told by the next line, with the totals since the
        start in parentheses, in the very words docs/broker.md quotes (Sessions)."""
        clock = clock_at(NOW)
        broker = self.make_broker(clock)
        with capturedLogs() as events:
            broker.create_offline_session("a")
            clock.advance(30)
            broker.create_offline_session("b")
            for _ in range(int(EXPIRATION)):  # the sweeper's looks (once a second at most)
                clock.advance(1)
            lines = [formatEvent(e) for e in events if "offline persistent sessions" in formatEvent(e)]
            self.assertEqual(lines, ["ended 1 offline persistent sessions (1 expired, 0 over the cap since the start)"])
            broker.create_offline_session("c")
            for _ in range(int(EXPIRATION) + 1):
                clock.advance(1)
        lines = [formatEvent(e) for e in events if "offline persistent sessions" in formatEvent(e)]
        told = "ended 2 offline persistent sessions (3 expired, 0 over the cap since the start)"
        self.assertEqual(lines[1:], [told])
        page = " ".join((Path(__file__).resolve().parents[2] / "docs" / "broker.md").read_text().split())
        self.assertTrue(f"`{told}`" in page, "docs/broker.md (Sessions) does not quote the line")

    def test_a_connected_client_has_no_offline_time(self) -> None:
        """A session whose client is connected at the checkpoint is saved without a time, and
        counts as offline from the restore (as any session of an older checkpoint does)."""
        clock = clock_at(NOW)
        broker = self.make_broker(clock)
        session = broker.sessions["here"] = ClientSession("here", clean=False)
        attached(broker, "here", clock, session=session)
        [entry] = persistence.checkpoint_content(broker)["sessions"]
        self.assertIsNone(entry["offline_since"])
        again = self.make_broker(clock_at(NOW + 10 * EXPIRATION))
        persistence.restore(again, {"sessions": [entry], "retained": []})
        self.assertEqual(again.offline.idle_for("here"), 0)
        self.assertEqual(again.end_due_sessions(), [])

    def test_checkpoints_from_before_offline_times_count_from_the_restore(self) -> None:
        """A checkpoint written before offline times were kept (no ``offline_since``) loads;
        its sessions count as offline from the restore."""
        store = BrokerStateStore(Path(self.mktemp()))
        store.directory.mkdir()
        store.path.write_text(json.dumps({
            "format": 1, "log_through": 0, "retained": [],
            "sessions": [{"client_id": "c", "username": None, "subscriptions": [["a/#", 1]], "queue": [],
                          "inflight": [], "inflight_in": []}]}))
        broker = self.make_broker(clock_at(NOW))
        persistence.restore(broker, store.load() or {})
        self.assertEqual(broker.offline.idle_for("c"), 0)

    def test_an_offline_time_that_is_no_time_is_refused(self) -> None:
        """``offline_since`` must be a finite number or null: anything else is no checkpoint of ours."""
        store = BrokerStateStore(Path(self.mktemp()))
        store.directory.mkdir()
        session = {"client_id": "c", "username": None, "subscriptions": [], "queue": [], "inflight": [],
                   "inflight_in": []}
        text = json.dumps({"format": 1, "retained": [], "sessions": [{**session, "offline_since": 0}]})
        for bad in ('"yesterday"', "true", "[1]", "NaN", "-Infinity", "1" * 400):  # (JSON text)
            store.path.write_text(text.replace('"offline_since": 0', f'"offline_since": {bad}'))
            error = str(self.assertRaises(persistence.BrokerStateError, store.load))
            self.assertIn("sessions[0].offline_since: not a time in seconds", error)


class ClockRuleTests(BrokerOnClockCase):
    """What a time off a wrong wall clock counts for (:func:`persistence.offline_for`)."""

    def test_rules(self) -> None:
        """A time in the future counts as now; so does one of a clock not set yet (before 2024),
        at the save or at the restore; otherwise the difference."""
        self.assertEqual(persistence.offline_for(NOW - 60, NOW), 60)
        self.assertEqual(persistence.offline_for(None, NOW), 0)
        self.assertEqual(persistence.offline_for(NOW + 3600, NOW), 0)  # stepped back since
        self.assertEqual(persistence.offline_for(1000.0, NOW), 0)  # saved at 1970
        self.assertEqual(persistence.offline_for(NOW - 60, 1000.0), 0)  # restored at 1970
        self.assertEqual(persistence.offline_for(CLOCK_SET_SINCE, CLOCK_SET_SINCE + 5), 5)

    def test_no_time_is_saved_while_the_clock_is_not_set(self) -> None:
        """A gateway that booted at 1970 saves no offline times: they would look 56 years old
        once the clock is right."""
        clock = clock_at(1000.0)
        broker = self.make_broker(clock)
        broker.create_offline_session("c")
        clock.advance(60)
        self.assertIsNone(persistence.checkpoint_content(broker)["sessions"][0]["offline_since"])

    def test_a_step_of_the_wall_clock_is_saved_at_once(self) -> None:
        """NTP steps the clock forward by 56 years after a boot at 1970: the broker asks for a
        checkpoint, which saves the offline times on the new clock (idle times run on the
        steady one), so a restart does not find every session 56 years old."""
        clock = SteppingClock()
        clock.advance(1000.0)
        broker = self.make_broker(clock)
        broker.create_offline_session("c")
        clock.advance(60)
        changes: list[None] = []
        broker.on_state_changed = lambda: changes.append(None)
        clock.step(NOW - clock.seconds())
        self.assertEqual(len(changes), 1)
        [entry] = persistence.checkpoint_content(broker)["sessions"]
        self.assertEqual(entry["offline_since"], NOW - 60)
        self.stop_broker(broker)
        clock.step(10)
        self.assertEqual(len(changes), 1)  # no longer heard once shut down

    def test_a_step_without_offline_sessions_asks_nothing(self) -> None:
        """A step when no session is offline asks for no checkpoint: no time in it moves."""
        clock = SteppingClock()
        broker = self.make_broker(clock)
        changes: list[None] = []
        broker.on_state_changed = lambda: changes.append(None)
        clock.step(NOW)
        self.assertEqual(changes, [])


class StateLogTimeTests(BrokerOnClockCase):
    """The state log says when a client went offline and came back; replay counts from it."""

    def test_leaving_is_logged(self) -> None:
        """A persistent session's client that goes offline is logged (``offline``, at the
        record's received time); a clean session's is not (coming back: test_state_log)."""
        clock = clock_at(NOW)
        broker = self.make_broker(clock)
        stream = RecordingStream()
        broker.state_log = StateLog(stream, clock)
        session = broker.sessions["p"] = ClientSession("p", clean=False)
        persistent, _ = attached(broker, "p", clock, session=session)
        clean, _ = attached(broker, "q", clock)
        clock.advance(5)
        broker.connection_ended(persistent)
        broker.connection_ended(clean)
        self.assertEqual(stream.ops(), [("offline", "p")])
        self.assertEqual(stream.records[0].received, NOW + 5)

    def test_replayed_offline_time(self) -> None:
        """``offline`` counts the session offline since the record's time (created if the
        checkpoint did not have it); a later ``online`` makes it one connected at the crash,
        offline from the restore, and an ``offline`` after that counts again."""
        clock = clock_at(NOW + 100)
        broker = self.make_broker(clock)
        records = [offline_record(1, "a", NOW), offline_record(2, "b", NOW),
                   offline_record(3, "b", NOW + 50, "online"), offline_record(4, "c", NOW + 10),
                   offline_record(5, "c", NOW + 20, "online"), offline_record(6, "c", NOW + 30),
                   offline_record(7, "d", 1000.0)]  # logged at 1970
        self.assertEqual(persistence.replay(broker, records, 0, RetainedBudget(0, 0)), 7)
        self.assertEqual({c: broker.offline.idle_for(c) for c in "abcd"}, {"a": 100, "b": 0, "c": 70, "d": 0})
        self.assertEqual(list(broker.offline._since), ["a", "c", "b", "d"])

    def test_replay_moves_a_checkpointed_time(self) -> None:
        """A session of the checkpoint, offline since then, whose client came back and left
        again after it: the logged time is the one that counts."""
        clock = clock_at(NOW + 100)
        broker = self.make_broker(clock)
        entry = {"client_id": "c", "username": None, "offline_since": NOW, "subscriptions": [], "queue": [],
                 "inflight": [], "inflight_in": []}
        persistence.restore(broker, {"sessions": [entry], "retained": []})
        self.assertEqual(broker.offline.idle_for("c"), 100)
        persistence.replay(broker, [offline_record(1, "c", NOW + 40, "online"), offline_record(2, "c", NOW + 60)], 0,
                           RetainedBudget(0, 0))
        self.assertEqual(broker.offline.idle_for("c"), 40)


class ExpiredAtStartTests(TestCase):
    """The broker service (real reactor, in process) ends at its start the sessions whose
    clients have been offline longer than the expiration, by the checkpoint's times."""

    timeout = 30

    @inlineCallbacks
    def test_expired_at_start_and_kept(self) -> Any:
        """A checkpoint holding one session offline for 10 minutes and one for 10 seconds, with
        an expiration of 5 minutes: the first is gone at the start (counted, logged as the other
        expiries are, its client gets SessionPresent=0), the second is there (SessionPresent=1)."""
        state_dir = Path(self.mktemp())
        store = BrokerStateStore(state_dir / "broker")
        now = reactor.seconds()
        sessions = [{"client_id": name, "username": None, "offline_since": now - idle,
                     "subscriptions": [["a/#", 1]], "queue": [["a/1", b"q", 1, False]], "inflight": [],
                     "inflight_in": []} for name, idle in (("stale", 600), ("recent", 10))]
        store.save({"sessions": sessions, "retained": []})
        section = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
                   "persistent_client_expiration": 300}
        with capturedLogs() as events:
            service = yield start_broker(self, reactor, section, state_dir=state_dir)
        self.assertEqual(sorted(service.broker.sessions), ["recent"])
        snapshot = service.snapshot()
        self.assertEqual((snapshot.sessions_expired, snapshot.offline_sessions), (1, 1))
        self.assertTrue(any("ended 1 offline persistent sessions (1 expired" in formatEvent(e) for e in events),
                        [formatEvent(e) for e in events])
        for name, connack in (("stale", NEW_SESSION), ("recent", SESSION_PRESENT)):
            client = yield scripted_connect(reactor, port_of(service))
            client.transport.write(packets.connect(name, flags=PERSISTENT))
            yield client.until(lambda: bool(client.others), reactor)
            self.assertEqual(client.others[0], connack, name)
            client.transport.loseConnection()
            yield client.lost
