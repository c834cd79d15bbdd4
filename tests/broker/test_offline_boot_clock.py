"""A persistent session's offline time across a restart when the wall clock is wrong at the
start (:mod:`gateway.broker.offlinetimes`): in the same boot it is counted on the boot's
clock, after a reboot the wall clock counts only when it looks right. ``task.Clock`` for
both clocks (no sockets), and one broker service start (real reactor, in process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.broker import persistence
from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.core import GatewayBroker
from gateway.broker.offlinetimes import MAX_OFF_TIME, offline_for
from gateway.broker.outbox import QueuedMessage
from gateway.broker.persistence import BrokerStateStore
from gateway.broker.retainedlimits import RetainedBudget
from gateway.broker.service import BrokerService
from gateway.broker.statelog import StateLog
from gateway.clockstep import CLOCK_SET_SINCE, BootClock
from gateway.journal.record import Record
from tests.broker.harness import ANONYMOUS, broker_settings
from tests.broker.test_durable_ack import CONFIG
from tests.broker.test_offline_times import EXPIRATION, NOW, BrokerOnClockCase, RecordingStream, clock_at

#: Ten years, give or take a leap day: how far ahead a wrong real-time clock may read.
YEARS = 10 * 365 * 86400.0


class Boot:
    """A boot of the machine: its id and its clock (a ``task.Clock`` the test advances)."""

    def __init__(self, boot: str = "boot-1", seconds: float = 5000.0) -> None:
        self.steady = clock_at(seconds)
        self.clock = BootClock(boot, self.steady.seconds)


class BootClockCase(BrokerOnClockCase):
    """Brokers on a wall clock and a boot clock, both ``task.Clock``."""

    def broker_in(self, wall: Clock, boot: Boot | None) -> GatewayBroker:
        """A started broker on ``wall`` in ``boot``, keeping offline sessions :data:`EXPIRATION` s."""
        broker = GatewayBroker(AmqttPlugins(CONFIG, self.loop), LocalBus(), wall,
                               persistent_client_expiration=EXPIRATION,
                               boot_clock=boot.clock if boot is not None else None)
        self.plugins_done(broker.start())
        self.addCleanup(self.stop_broker, broker)
        return broker

    def saved_with_a_queued_message(self, wall: Clock, boot: Boot, idle: float = 60.0) -> dict[str, Any]:
        """The checkpoint (as saved and loaded) of a broker in ``boot`` whose session ``c``, holding one
        acknowledged QoS 1 message, has been offline ``idle`` seconds (both clocks advanced by it)."""
        broker = self.broker_in(wall, boot)
        session = broker.create_offline_session("c")
        broker.outbox_for(session).push(QueuedMessage("a/1", b"kept", 1, False))
        wall.advance(idle)
        boot.steady.advance(idle)
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(broker))
        return store.load() or {}

    @staticmethod
    def queued(broker: GatewayBroker) -> list[bytes]:
        """The payloads queued for session ``c`` of ``broker``."""
        outbox = broker.sessions["c"].outbox
        return [bytes(m.payload) for m in outbox.messages] if outbox is not None else []

    def restored(self, state: dict[str, Any], wall: Clock, boot: Boot | None) -> GatewayBroker:
        """A broker on ``wall`` in ``boot`` with ``state`` restored, after its first look for due sessions."""
        broker = self.broker_in(wall, boot)
        persistence.restore(broker, state)
        broker.end_due_sessions()
        return broker


class SameBootTests(BootClockCase):
    """A restart in the same boot counts the time offline on the boot's clock, whatever the wall clock says."""

    def test_a_clock_set_years_ahead_while_stopped_ends_no_session(self) -> None:
        """The wall clock set ten years ahead while the gateway was stopped (by hand, a wrong
        RTC read again): the session, offline 60 s when saved and 30 s stopped, has been
        offline 90 s; it stays with the acknowledged message queued for it. (Before, it ended
        at once with its message.)"""
        boot = Boot()
        state = self.saved_with_a_queued_message(clock_at(NOW), boot)
        self.assertEqual(state["clock"], ["boot-1", NOW + 60, 5060.0])
        boot.steady.advance(30)
        broker = self.restored(state, clock_at(NOW + 60 + YEARS), boot)
        self.assertEqual(broker.offline.idle_for("c"), 90)
        self.assertEqual(broker.offline.expired, 0)
        self.assertEqual(self.queued(broker), [b"kept"])

    def test_a_clock_set_back_while_stopped_keeps_no_session_longer(self) -> None:
        """The wall clock set a year back while the gateway was stopped: the session offline
        60 s when saved and EXPIRATION s stopped has been offline longer than the expiration,
        and ends at the start. (Before, it counted as offline from the start.)"""
        boot = Boot()
        state = self.saved_with_a_queued_message(clock_at(NOW), boot)
        boot.steady.advance(EXPIRATION)
        broker = self.restored(state, clock_at(NOW - 365 * 86400.0), boot)
        self.assertEqual((list(broker.sessions), broker.offline.expired), ([], 1))

    def test_times_are_saved_while_the_wall_clock_is_not_set(self) -> None:
        """With the boot's clock, a gateway at 1970 saves its offline times too: a restart in
        the same boot (a nightly restart of a gateway NTP never reached) counts them."""
        boot = Boot()
        state = self.saved_with_a_queued_message(clock_at(1000.0), boot, idle=EXPIRATION / 2)
        self.assertEqual(state["sessions"][0]["offline_since"], 1000.0)
        boot.steady.advance(EXPIRATION / 2 + 1)
        broker = self.restored(state, clock_at(1000.0 + EXPIRATION), boot)
        self.assertEqual(broker.offline.expired, 1)

    def test_a_logged_offline_time_is_on_the_boot_clock(self) -> None:
        """An ``offline`` record carries the boot's id and clock (its ``boot`` header); replayed
        in the same boot with the wall clock ten years ahead, it counts the boot clock's time."""
        boot = Boot()
        wall = clock_at(NOW)
        broker = self.broker_in(wall, boot)
        stream = RecordingStream()
        broker.state_log = StateLog(stream, wall, boot=boot.clock)
        broker.state_log.offline("c")
        self.assertEqual(dict(stream.records[0].headers)["boot"], "boot-1 5000.000")
        boot.steady.advance(40)
        again = self.broker_in(clock_at(NOW + YEARS), boot)
        persistence.replay(again, stream.records, 0, RetainedBudget(0, 0))
        self.assertEqual(again.offline.idle_for("c"), 40)


class RebootTests(BootClockCase):
    """After a reboot, the time before the save counts, and the time since counts when the wall clock looks right."""

    def test_the_wall_clock_counts_when_it_looks_right(self) -> None:
        """Saved offline for 60 s, restored after a reboot 100 s later by the wall clock: 160 s."""
        state = self.saved_with_a_queued_message(clock_at(NOW), Boot())
        broker = self.restored(state, clock_at(NOW + 160), Boot("boot-2", 20.0))
        self.assertEqual(broker.offline.idle_for("c"), 160)

    def test_a_powered_off_time_past_the_expiration_ends_the_session(self) -> None:
        """A reboot after a power-off longer than the expiration (within a plausible time) ends
        the session at the start, as before."""
        state = self.saved_with_a_queued_message(clock_at(NOW), Boot())
        broker = self.restored(state, clock_at(NOW + 60 + 10 * EXPIRATION), Boot("boot-2"))
        self.assertEqual(broker.offline.expired, 1)

    def test_a_wrong_clock_counts_the_saved_idle_time_only(self) -> None:
        """The wall clock after the reboot years ahead of the save, behind it, or not set: the
        power-off is not known, and the session counts only the 60 s it was offline at the
        save; its message stays."""
        state = self.saved_with_a_queued_message(clock_at(NOW), Boot())
        for now in (NOW + 60 + YEARS, NOW + 60 + MAX_OFF_TIME + 1, NOW - 3600, 1000.0):
            broker = self.restored(state, clock_at(now), Boot("boot-2"))
            self.assertEqual(broker.offline.idle_for("c"), 60, now)
            self.assertEqual(self.queued(broker), [b"kept"])

    def test_an_unknown_boot_is_another_boot(self) -> None:
        """A boot whose id the kernel does not tell ("") compares with none: the wall clock's rules."""
        state = self.saved_with_a_queued_message(clock_at(NOW), Boot(""))
        self.assertEqual(state["clock"][0], "")
        broker = self.restored(state, clock_at(NOW + 60 + YEARS), Boot(""))
        self.assertEqual(broker.offline.idle_for("c"), 60)

    def test_a_logged_offline_time_of_another_boot(self) -> None:
        """An ``offline`` record of another boot (or of a version without the header) counts on
        the wall clock, when it looks right."""
        records = [Record("", b"", 0, False, NOW, (("op", "offline"), ("n", "1"), ("client", "a"),
                                                   ("boot", "boot-1 100.000"))),
                   Record("", b"", 0, False, NOW, (("op", "offline"), ("n", "2"), ("client", "b"))),
                   Record("", b"", 0, False, NOW, (("op", "offline"), ("n", "3"), ("client", "c"),
                                                   ("boot", "boot-2 not-a-number")))]
        for now, idle in ((NOW + 50, 50), (NOW + YEARS, 0)):
            broker = self.broker_in(clock_at(now), Boot("boot-2"))
            persistence.replay(broker, records, 0, RetainedBudget(0, 0))
            self.assertEqual({c: broker.offline.idle_for(c) for c in "abc"}, dict.fromkeys("abc", idle))


class OlderStateTests(BootClockCase):
    """What was saved without the boot's clock loads as before; the wall clock's bounds apply to it."""

    def test_wall_clock_rules(self) -> None:
        """A time more than :data:`MAX_OFF_TIME` before the clock at start is not believed."""
        self.assertEqual(offline_for(NOW - MAX_OFF_TIME, NOW), MAX_OFF_TIME)
        self.assertEqual(offline_for(NOW - MAX_OFF_TIME - 1, NOW), 0)
        self.assertEqual(offline_for(CLOCK_SET_SINCE, CLOCK_SET_SINCE + 5), 5)

    def test_a_checkpoint_without_the_clock(self) -> None:
        """A checkpoint of a version that kept no ``clock`` loads; its times are the wall clock's."""
        entry = {"client_id": "c", "username": None, "offline_since": NOW - 100, "subscriptions": [], "queue": [],
                 "inflight": [], "inflight_in": []}
        broker = self.restored({"sessions": [entry], "retained": []}, clock_at(NOW), Boot())
        self.assertEqual(broker.offline.idle_for("c"), 100)

    def test_a_clock_that_is_no_clock_is_refused(self) -> None:
        """A ``clock`` that is not ``[boot id, wall seconds, boot seconds]`` is no checkpoint of ours."""
        store = BrokerStateStore(Path(self.mktemp()))
        store.directory.mkdir()
        for bad in ('"boot-1"', '["boot-1", 1.0]', '[1, 2.0, 3.0]', '["b", "x", 3.0]', '["b", 1.0, NaN]'):
            store.path.write_text(f'{{"format": 1, "clock": {bad}, "sessions": [], "retained": []}}')
            error = str(self.assertRaises(persistence.BrokerStateError, store.load))
            self.assertIn("clock: not [boot id, wall-clock seconds, boot-clock seconds]", error)

    def test_without_a_boot_clock_nothing_changes(self) -> None:
        """A broker given no boot clock saves no ``clock`` (and no time while the wall clock is not set)."""
        wall = clock_at(1000.0)
        broker = self.broker_in(wall, None)
        broker.create_offline_session("c")
        state = persistence.checkpoint_content(broker)
        self.assertNotIn("clock", state)
        self.assertIsNone(state["sessions"][0]["offline_since"])


class ServiceTests(TestCase):
    """The broker service hands its boot clock to the broker it starts (real reactor, in process)."""

    timeout = 30

    @inlineCallbacks
    def test_a_start_in_the_same_boot_uses_the_boot_clock(self) -> Any:
        """A checkpoint saved in this boot 600 s ago on the boot's clock, when the wall clock read
        a year later than now (set back since): its session, offline 20 s then, is past the
        expiration of 300 s and ends at the start (on the wall clock it would look offline
        from the start)."""
        boot = BootClock("boot-1", Boot(seconds=10_000.0).steady.seconds)
        state_dir = Path(self.mktemp())
        saved_at = reactor.seconds() + 365 * 86400.0
        (state_dir / "broker").mkdir(parents=True)
        (state_dir / "broker" / "state.json").write_text(json.dumps({
            "format": 1, "clock": ["boot-1", saved_at, 10_000.0 - 600], "retained": [],
            "sessions": [{"client_id": "c", "username": None, "offline_since": saved_at - 20,
                          "subscriptions": [["a/#", 1]], "queue": [], "inflight": [], "inflight_in": []}]}))
        section = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
                   "persistent_client_expiration": 300}
        service = BrokerService(broker_settings(section), reactor, state_dir=state_dir, boot=boot)
        yield service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((sorted(service.broker.sessions), service.snapshot().sessions_expired), ([], 1))
