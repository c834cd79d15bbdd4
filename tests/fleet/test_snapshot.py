"""The fleet service's read-side snapshot: what an operator learns of its polls, failures,
the server's Retry-After, the action under way and the feedback waiting, without the logs."""

from __future__ import annotations

import dataclasses
import json

from gateway.clockstep import BootClock
from gateway.fleet.snapshot import FleetSnapshot
from gateway.fleet.state import FleetState
from gateway.readside import ReadSide, ServiceState, to_jsonable
from tests.fleet.ddiserver import deployment
from tests.steppingclock import SteppingClock
from tests.fleet.test_service import ARCHIVE, FILES, SETTINGS, FleetHarness
from tests.test_readside import FakeService


class FleetSnapshotTests(FleetHarness):
    """``FleetService.snapshot()`` against the in-memory DDI server on a fake clock (first poll
    at t=5, the midpoint of ``min_poll_interval``; the server's sleep 60 s)."""

    def test_after_a_good_poll(self) -> None:
        """Before the first poll it waits for it (due in 5 s); after it: one poll, ok, when, the
        server's sleep in force, the next poll due in it, nothing failing or waiting; stopped after
        the stop. The counters and times are JSON as the admin API serves them."""
        fleet = self.start()
        before = fleet.snapshot()
        self.assertEqual((before.state, before.polls, before.next_poll_in_s, before.last_poll_outcome,
                          before.last_success_at), ("waiting", 0, 5.0, "", None))
        self.run_for(6)
        self.assertEqual(fleet.snapshot(), FleetSnapshot(
            server="https://ddi.example", tenant="DEFAULT", controller_id="gw-1", state="waiting", polls=1,
            failures=0, failures_in_row=0, last_poll_at=5.0, last_poll_outcome="ok", last_success_at=5.0,
            last_error="", last_error_at=None, failing_since=None, next_poll_in_s=59.0, held_until=None,
            server_sleep_s=60.0, action_id="", action_status="", sw_version="", feedback_waiting=0,
            feedback_oldest_age_s=None))
        json.dumps(to_jsonable(fleet.snapshot()))
        self.stop()
        self.assertEqual((fleet.snapshot().state, fleet.snapshot().next_poll_in_s), ("stopped", None))

    def test_failing_polls_leave_the_status_running(self) -> None:
        """While its polls fail the fleet service is ``running`` in ``GET /status`` with no
        ``error``, as a link whose cloud is down is (docs/admin.md, docs/fleet.md): the server, or
        the way to it, fails, not the service; this snapshot says so."""
        self.server.errors = [(503, {})]
        fleet = self.start()
        self.run_for(6)
        others = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(self.clock, *others, services=[*others, fleet], fleet=fleet)
        self.assertEqual((fleet.snapshot().state, side.status().services[-1]), ("failing", ServiceState("fleet", True)))

    def test_starting_until_the_update_service_has_loaded(self) -> None:
        """While the update service loads its operations the fleet does not poll: ``starting``,
        no poll due yet."""
        fleet = self.start(load_after=3)
        self.assertEqual((fleet.snapshot().state, fleet.snapshot().next_poll_in_s), ("starting", None))
        self.run_for(4)
        self.assertEqual(fleet.snapshot().state, "waiting")

    def test_starting_after_a_restart_under_a_retry_after(self) -> None:
        """A restart under the server's Retry-After (kept in the state file) is ``starting`` while
        the update service loads its operations, as docs/fleet.md says, the hold in ``held_until``
        (it said ``held``), then ``held`` until the hold ends."""
        self.server.errors = [(503, {"Retry-After": "120"})]
        self.start()
        self.run_for(6)  # t=5: 503, every request held until t=155
        self.stop()
        fleet = self.start(load_after=3)
        self.assertEqual((fleet.snapshot().state, fleet.snapshot().held_until), ("starting", 155.0))
        self.run_for(4)
        self.assertEqual((fleet.snapshot().state, fleet.snapshot().held_until), ("held", 155.0))

    def test_after_failed_polls(self) -> None:
        """Failed polls are counted (in all and in a row), with the last one's cause and time and
        since when they fail, ``failing`` until a poll goes well; then the count in a row is 0 and
        the last error stays (with its time) for the operator to see why it failed."""
        self.server.errors = [(503, {}), (503, {})]
        fleet = self.start()
        self.run_for(6)  # t=5: 503 -> next in 15
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.state, snapshot.polls, snapshot.failures, snapshot.failures_in_row,
                          snapshot.last_poll_outcome, snapshot.last_poll_at, snapshot.last_success_at,
                          snapshot.last_error_at, snapshot.failing_since, snapshot.next_poll_in_s),
                         ("failing", 1, 1, 1, "failed", 5.0, None, 5.0, 5.0, 14.0))
        self.assertIn("HTTP 503", snapshot.last_error)
        self.run_for(15)  # t=20: 503 -> next in 30
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.polls, snapshot.failures_in_row, snapshot.last_error_at, snapshot.failing_since),
                         (2, 2, 20.0, 5.0))
        self.run_for(30)  # t=50: the poll goes well
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.state, snapshot.polls, snapshot.failures, snapshot.failures_in_row,
                          snapshot.last_poll_outcome, snapshot.last_success_at, snapshot.failing_since,
                          snapshot.last_error_at), ("waiting", 3, 2, 0, "ok", 50.0, None, 20.0))
        self.assertIn("HTTP 503", snapshot.last_error)

    def test_under_retry_after(self) -> None:
        """A 429 with Retry-After holds every request back: ``held`` until when (300 s and the
        spread, midpoint: 375 s after the poll), the next poll due then; ``failing`` is what
        follows once the hold has passed and a poll fails again."""
        self.server.errors = [(429, {"Retry-After": "300"}), (503, {})]
        fleet = self.start()
        self.run_for(6)
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.state, snapshot.held_until, snapshot.next_poll_in_s, snapshot.failures_in_row),
                         ("held", 380.0, 374.0, 1))
        self.assertIn("429", snapshot.last_error)
        self.run_for(375)  # t=380: 503
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.state, snapshot.held_until, snapshot.failures_in_row), ("failing", None, 2))

    def test_with_feedback_waiting(self) -> None:
        """Feedback the server does not take waits in the outbox: how many, how long the oldest
        has waited (from when it was queued, across a restart); none once taken."""
        self.server.deployment = deployment("14", FILES)
        self.server.feedback_errors = [503] * 100
        fleet = self.start()
        self.run_for(8)  # t=5: installed, its 6 steps not taken
        self.assertEqual(self.installer.archives, [ARCHIVE])
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.feedback_waiting, snapshot.feedback_oldest_age_s, snapshot.sw_version),
                         (6, 3.0, "2"))
        self.assertIn("feedback: HTTP 503", snapshot.last_error)
        self.stop()
        self.clock.advance(100)
        fleet = self.start()
        self.assertEqual((fleet.snapshot().feedback_waiting, fleet.snapshot().feedback_oldest_age_s), (6, 103.0))
        self.server.feedback_errors = []
        self.run_for(6)
        self.assertEqual((fleet.snapshot().feedback_waiting, fleet.snapshot().feedback_oldest_age_s), (0, None))

    def test_feedback_waiting_across_a_step_of_the_wall_clock(self) -> None:
        """Feedback queued on a gateway booted at 1970 (no real-time clock), then NTP steps the
        clock by 56 years: the oldest has waited the seconds it waited, not 56 years (an alert
        on gateway_fleet_feedback_oldest_age_seconds fired), after a restart too; a step back
        does not make it younger either."""
        self.clock = SteppingClock()
        self.server.deployment = deployment("14", FILES)
        self.server.feedback_errors = [503] * 100
        fleet = self.start()
        self.run_for(8)  # t=5: installed, its 6 steps not taken
        self.clock.step(56 * 365 * 86400.0)
        self.assertEqual((fleet.snapshot().feedback_waiting, fleet.snapshot().feedback_oldest_age_s), (6, 3.0))
        self.clock.step(-3600.0)
        self.assertEqual(fleet.snapshot().feedback_oldest_age_s, 3.0)
        self.stop()
        self.clock.advance(100)
        fleet = self.start()
        self.assertEqual(fleet.snapshot().feedback_oldest_age_s, 103.0)

    def test_a_hold_kept_across_a_step_back_and_a_restart(self) -> None:
        """A Retry-After of 300 s, then NTP steps the clock back an hour and the gateway
        restarts: the hold kept in the state file ends when it did, not an hour later."""
        self.clock = SteppingClock()
        self.server.errors = [(429, {"Retry-After": "300"})]
        self.start()
        self.run_for(6)
        self.clock.step(-3600.0)
        self.stop()
        fleet = self.start()
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.state, snapshot.held_until - self.clock.seconds()), ("held", 374.0))

    def test_a_step_after_a_reboot_leaves_the_times_saved_before_it(self) -> None:
        """Feedback queued and a hold set before a reboot (on a clock that was right), the gateway
        started at 1970 (no real-time clock), then NTP steps the clock by 56 years: the times read
        at the start were not on the clock it stepped, and stay. The feedback has waited since it
        was queued (it said -56 years, and hawkBit would record the step 56 years ahead), and the
        state file keeps both times as they were (a restart then held every request back for a
        day and a half: the hold's end was 56 years ahead)."""
        queued = 1_780_000_000.0
        path = self.state / "fleet" / "state.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"outbox": [{"kind": "cancelAction", "action_id": "4", "status": {},
                                                "queued_at": queued}], "held_until": queued + 60}))
        self.clock = SteppingClock()
        self.server.feedback_errors = [503] * 100
        self.server.errors = [(429, {"Retry-After": "300"})]  # (a hold of this boot: the step moves it)
        fleet = self.start()
        self.run_for(6)
        held = fleet.state.held_until
        self.clock.step(queued + 94.0)
        self.assertEqual(fleet.snapshot().feedback_oldest_age_s, 100.0)
        self.assertEqual(fleet.state.held_until, held + queued + 94.0)
        self.stop()
        saved = FleetState.load(path)
        self.assertEqual((saved.outbox[0].queued_at, saved.held_until), (queued, held + queued + 94.0))

    def test_a_step_after_a_reboot_moves_no_hold_of_before_it(self) -> None:
        """A ``Retry-After`` hold that ended before a reboot, then the gateway started at 1970 and
        NTP stepped the clock: the hold's end stays where it was, and a restart keeps to no hold
        (its end moved 56 years ahead held every request back for a day and a half)."""
        ended = 1_780_000_000.0
        path = self.state / "fleet" / "state.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"held_until": ended, "outbox": [{"kind": "cancelAction", "action_id": "4",
                                                                     "status": {}, "queued_at": ended}]}))
        self.clock = SteppingClock()
        self.server.feedback_errors = [503] * 100
        self.start()
        self.run_for(2)
        self.clock.step(ended + 3600.0)
        self.stop()
        fleet = self.start()
        self.assertEqual((FleetState.load(path).held_until, fleet.snapshot().held_until), (ended, None))

    def test_a_restart_in_the_same_boot_goes_on_moving_the_times(self) -> None:
        """Feedback queued on a gateway booted at 1970, the gateway restarted in the same boot, then
        NTP steps the clock: the times the state file kept were read on the clock that stepped (its
        ``clock`` says so), and follow the step as they did before the restart."""
        self.clock = SteppingClock()
        self.boot = BootClock("boot-1", self.clock.steady_seconds)
        self.server.deployment = deployment("14", FILES)
        self.server.feedback_errors = [503] * 100
        self.start()
        self.run_for(8)  # t=5: installed, its 6 steps not taken
        self.stop()
        self.clock.advance(100)
        fleet = self.start()
        self.clock.step(56 * 365 * 86400.0)
        self.assertEqual(fleet.snapshot().feedback_oldest_age_s, 103.0)

    def test_a_hold_of_before_a_reboot_that_ended_leaves_the_times_of_this_boot_on_its_clock(self) -> None:
        """A ``Retry-After`` hold saved before a reboot (another boot's clock) is kept to at the
        start and ends; feedback queued after it is on this boot's clock, which the state file
        says (``clock``) once the hold has ended: after a restart in the same boot a step of the
        clock moves it. The ended hold, read on the other clock, kept the state file's ``clock``
        null for the whole run, and the feedback's wait read 56 years after the step."""
        path = self.state / "fleet" / "state.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"held_until": 60.0, "clock": ["boot-0", 0.0]}))
        self.clock = SteppingClock()
        self.boot = BootClock("boot-1", self.clock.steady_seconds)
        self.server.deployment = deployment("14", FILES)
        self.server.feedback_errors = [503] * 100
        fleet = self.start()
        self.assertEqual(fleet.snapshot().held_until, 60.0)
        self.run_for(64)  # t=60: the hold ends, the first poll installs; its steps are not taken
        self.assertEqual(fleet.snapshot().feedback_waiting, 6)
        self.stop()
        self.assertIsNotNone(FleetState.load(path).clock)
        self.clock.advance(100)
        fleet = self.start()
        self.clock.step(56 * 365 * 86400.0)
        self.assertEqual(fleet.snapshot().feedback_oldest_age_s, 104.0)

    def test_a_hold_of_a_set_clock_read_at_1970_holds_nothing(self) -> None:
        """A ``Retry-After`` hold saved on a clock that was right, then a reboot without a real-time
        clock (the gateway starts at 1970): its end cannot be compared with that clock, and no
        hold is kept (every request was held back for a day and a half, the most a start keeps
        to), the first poll goes at its time."""
        path = self.state / "fleet" / "state.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"held_until": 1_780_000_000.0}))
        fleet = self.start()
        self.assertEqual(fleet.snapshot().held_until, None)
        self.run_for(6)
        self.assertEqual(fleet.snapshot().polls, 1)

    def test_feedback_from_an_older_state_waits_from_the_start(self) -> None:
        """A state written before feedback carried when it was queued: its feedback counts as
        waiting from the start that found it."""
        path = self.state / "fleet" / "state.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"outbox": [{"kind": "cancelAction", "action_id": "4", "status": {}}]}))
        self.clock.advance(1000)
        self.server.feedback_errors = [503] * 100
        fleet = self.start()
        self.run_for(2)
        self.assertEqual((fleet.snapshot().feedback_waiting, fleet.snapshot().feedback_oldest_age_s), (1, 2.0))
        self.assertEqual(FleetState.load(path).outbox[0].queued_at, None)  # (written again only with a change)

    def test_the_action_under_way(self) -> None:
        """The action the server offers and its step: ``DOWNLOADED`` while it waits for its
        maintenance window, ``waiting`` while the server does not let it download; none once
        it is closed."""
        self.server.deployment = deployment("10", FILES, window="unavailable")
        fleet = self.start()
        self.run_for(8)
        self.assertEqual((fleet.snapshot().action_id, fleet.snapshot().action_status), ("10", "DOWNLOADED"))
        self.server.deployment = deployment("11", FILES, download="skip")
        self.run_for(61)
        self.assertEqual((fleet.snapshot().action_id, fleet.snapshot().action_status), ("11", "waiting"))
        self.server.deployment = None
        self.run_for(61)
        self.assertEqual((fleet.snapshot().action_id, fleet.snapshot().action_status), ("", ""))

    def test_the_server_url_is_shown_without_credentials(self) -> None:
        """The server's URL is shown with a password or a secret query value redacted (the
        configuration refuses both; the snapshot never shows one however it got there)."""
        fleet = self.start(dataclasses.replace(SETTINGS, base_url="https://user:pw@ddi.example/x?token=t"))
        self.assertEqual(fleet.snapshot().server, "https://user:<redacted>@ddi.example/x?token=<redacted>")
