"""The fleet service against the in-memory DDI server: polling, configData, deployments mapped
onto the real update service, modes, maintenance windows, cancel, errors, restarts."""

from __future__ import annotations

import dataclasses

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.apps.operations import InstallResult
from gateway.clockstep import BootClock
from gateway.fleet.ddi import DDIClient, DDIError, parse_sleep, refused_for_good
from gateway.fleet import actions as fleet_actions
from gateway.fleet import service as fleet_service
from gateway.fleet.pacing import MAX_HOLD
from gateway.fleet.service import FleetService
from gateway.fleet.settings import FleetSettings
from gateway.fleet.state import Feedback, FleetState
from tests.test_filelayer import record_fsyncs
from gateway.updates import service as updates_service
from gateway.updates.operation import Status
from gateway.updates.service import UpdateService
from gateway.updates.settings import UpdatesSettings
from tests.fleet.ddiserver import ROOT, DDIServer, deployment
from tests.test_netfailures import TWISTED_501
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock
from tests.updates.resources import RangeFile
from tests.heldthreads import HeldThreads
from tests.updates.test_downloader import run_inline
from tests.updates.test_service import FakeInstaller, request as kanto_request

ARCHIVE = b"app archive " * 5000
FILES = {"app.v2.tar.gz": (ARCHIVE, hashlib.sha256(ARCHIVE).hexdigest())}
TOKEN = "TargetToken s3cret"
SETTINGS = FleetSettings(enabled=True, base_url="https://ddi.example", controller_id="gw-1", auth="none")


class FleetStateDurableTests(SynchronousTestCase):
    """The fleet state's directory survives a power cut with the state."""

    def test_the_directory_made_for_the_state_is_fsynced_in_its_parent(self) -> None:
        """``FleetState.save`` makes ``fleet/`` and fsyncs its parent: it was made with
        ``Path.mkdir`` and never fsynced, so a power cut could take the state (the actions
        reported, the outbox of feedback) with it."""
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        fsynced = record_fsyncs(self)
        FleetState().save(base / "fleet" / "state.json")
        self.assertIn(str(base), fsynced)

    def test_an_earlier_versions_canceled_action_is_still_ended(self) -> None:
        """An action an earlier version reported ``CANCELED`` (before the statuses became Kanto's
        FINISHED_CANCELED) loads as FINISHED_CANCELED, so that it is still taken for ended."""
        path = Path(self.mktemp())
        path.write_text(json.dumps({"reported": {"7": "CANCELED", "8": "FINISHED_SUCCESS"}}))
        self.assertEqual(FleetState.load(path).reported, {"7": "FINISHED_CANCELED", "8": "FINISHED_SUCCESS"})

    def test_a_canceled_action_is_saved_in_the_word_earlier_builds_read(self) -> None:
        """``reported`` keeps a FINISHED_CANCELED action as ``CANCELED`` on disk (and reads it back
        as FINISHED_CANCELED): a build up to 47daafe1, run again by a rollback, did not take
        FINISHED_CANCELED for an ended action, and installed a canceled action the server offered again."""
        path = Path(self.mktemp())
        FleetState(reported={"7": "FINISHED_CANCELED", "8": "FINISHED_SUCCESS"}).save(path)
        self.assertEqual(json.loads(path.read_text())["reported"], {"7": "CANCELED", "8": "FINISHED_SUCCESS"})
        self.assertEqual(FleetState.load(path).reported, {"7": "FINISHED_CANCELED", "8": "FINISHED_SUCCESS"})


class FleetHarness(SynchronousTestCase):
    """One gateway, the DDI server in memory, a fake clock (the midpoint of every random range):
    no tests of its own, those of the modules that share it."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.clock = Clock()
        self.server = DDIServer()
        self.file = RangeFile(ARCHIVE)
        self.server.files["app.v2.tar.gz"] = self.file
        self.stub = StubTreq(self.server)
        self.installer = FakeInstaller()
        self.attributes = {"version": "1.0", "apps": "app 1"}
        self.fleet: FleetService | None = None
        self.boot: BootClock | None = None  # (the boot's clock the fleet service is given)

    def start(self, settings: FleetSettings = SETTINGS, load_after: float | None = None,
              disk: Any = run_inline, uniform: Any = lambda a, b: (a + b) / 2,
              previous: FleetService | None = None) -> FleetService:
        """Start the update service and the fleet service; ``load_after`` lets the update service's
        blocking work (loading its operations first) end that many seconds later, as its thread
        does in a running gateway, after the fleet service has started; ``disk`` runs the fleet
        service's blocking work (a :class:`HeldThreads` holds it for the test to release);
        ``previous``: the stopped service a configuration change replaces."""
        def later(f: Any, *args: Any) -> Any:
            assert load_after is not None
            return deferLater(self.clock, load_after, f, *args)
        self.updates = UpdateService(UpdatesSettings(), self.state, self.clock, self.stub, lambda *a: None,
                                     self.installer, run_inline if load_after is None else later,
                                     lambda attempt: 1.0)
        loaded = self.updates.startService()
        ddi = DDIClient(self.stub, self.clock, settings.base_url, settings.tenant, settings.controller_id, TOKEN)
        self.fleet = FleetService(settings, self.state, self.clock, ddi, self.updates, lambda: dict(self.attributes),
                                  disk, uniform=uniform, boot=self.boot)
        if previous is not None:
            self.fleet.goes_on_from(previous)
        self.fleet.startService()
        if load_after is None:
            self.successResultOf(loaded)
        return self.fleet

    def stop(self) -> None:
        assert self.fleet is not None
        self.successResultOf(self.fleet.stopService())
        self.updates.stopService()

    def run_for(self, seconds: int) -> None:
        for _ in range(seconds):
            self.stub.flush()
            self.clock.advance(1)
            self.stub.flush()


class FleetServiceTests(FleetHarness):
    """The fleet service's polls, deployments, cancels, feedback and restarts."""

    def install_in_turn(self, *actions: tuple[str, str]) -> None:
        """Offer each ``(action id, version)`` in turn (starting the services at the first) and
        see it end closed/success."""
        for action_id, version in actions:
            body = deployment(action_id, FILES)
            body["deployment"]["chunks"][0]["version"] = version
            self.server.deployment = body
            if self.fleet is None:
                self.start()
            self.run_for(61)
            self.assertEqual(self.server.executions()[-1], ("closed", "success"))

    def test_sleep_format(self) -> None:
        """config.polling.sleep is HH:MM:SS in ASCII digits; anything else is ignored (None):
        ``int()`` read ``٠٠:٠١:٠٠`` (Arabic-Indic), ``+0:01:00`` and `` 0:01:00`` as a minute."""
        self.assertEqual(parse_sleep("01:02:03"), 3723.0)
        for bad in ("1:2", "00:61:00", "a:b:c", 5, None, "\u0660\u0660:\u0660\u0661:\u0660\u0660",
                    "+0:01:00", " 0:01:00", "0:01:0_0"):
            self.assertIsNone(parse_sleep(bad))

    def test_forced_deployment_installs_and_reports_every_step(self) -> None:
        """A forced action is downloaded (digest checked) and installed by the update service; every
        step goes back as feedback, ending closed/success with progress 1 of 1; the token is sent."""
        self.server.deployment = deployment("5", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.assertEqual(self.server.executions(), [
            ("proceeding", "none"), ("download", "none"), ("downloaded", "none"), ("proceeding", "none"),
            ("proceeding", "none"), ("closed", "success")])
        last = self.server.feedback[-1][2]["status"]
        self.assertEqual(last["result"]["progress"], {"cnt": 1, "of": 1})
        self.assertEqual({a for a in self.server.auth}, {TOKEN})
        self.assertEqual(self.updates.operations["ddi-5"].status, Status.FINISHED_SUCCESS)
        self.assertEqual(FleetState.load(self.state / "fleet" / "state.json").outbox, [])
        # a server that lost the final feedback offers it again: never installed twice, told once more
        self.server.offer_until_closed = False
        self.server.deployment = deployment("5", FILES)
        self.run_for(130)
        self.assertEqual(self.server.executions()[-2:], [("closed", "success")] * 2)
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.stop()

    def test_links_on_the_same_origin_written_otherwise_are_followed(self) -> None:
        """The server's own origin is compared as an origin: a base_url with the default port and
        upper-case letters still follows the server's links and sends the token with its artifact
        downloads (every deploymentBase link was refused as outside the server: no deployment)."""
        seen: list[str | None] = []
        render = self.file.render_GET

        def render_seen(request: Any) -> Any:
            header = request.getHeader("authorization")
            seen.append(header.decode() if isinstance(header, bytes) else header)
            return render(request)

        self.file.render_GET = render_seen  # type: ignore[method-assign]
        self.server.deployment = deployment("18", FILES)
        self.start(FleetSettings(enabled=True, base_url="HTTPS://DDI.example:443", controller_id="gw-1",
                                 auth="none"))
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.assertEqual(set(seen), {TOKEN})

    def test_config_data_sent_first_when_asked_and_when_changed(self) -> None:
        """configData is PUT (mode merge) at the first poll, when the server asks, and when the
        attributes change; not at every poll, nor after a restart with the same attributes."""
        self.start()
        self.run_for(7)
        self.assertEqual(self.server.config, [{"mode": "merge", "data": {"version": "1.0", "apps": "app 1"}}])
        self.run_for(61)
        self.assertEqual(len(self.server.config), 1)
        self.server.ask_config = True
        self.run_for(61)
        self.assertEqual(len(self.server.config), 2)
        self.attributes["apps"] = "app 2"
        self.run_for(61)
        self.assertEqual(self.server.config[-1]["data"]["apps"], "app 2")
        self.assertEqual(self.server.polls, 4)
        self.stop()
        self.start()  # what the server took is remembered: not sent again after a restart
        self.run_for(61)
        self.assertEqual((self.server.polls, len(self.server.config)), (5, 3))
        self.stop()

    def test_refused_config_data_does_not_stop_deployments(self) -> None:
        """configData the server refuses as it is (hawkBit: a value over 128 characters) is logged,
        is the snapshot's ``last_error`` (as feedback refused for good is; it was only in the log),
        and is not sent again until the attributes change; the poll goes on to its deployment (it
        failed the whole poll, every poll: no deployment could ever reach the device). A 5xx
        still fails the poll."""
        self.server.config_errors = [400, 400]
        self.server.deployment = deployment("21", FILES)
        fleet = self.start()
        self.run_for(8)
        shown = fleet.snapshot()
        self.assertTrue(shown.last_error.startswith("PUT https://ddi.example/"), shown.last_error)
        self.assertIn("/configData", shown.last_error)
        self.assertEqual((shown.last_error_at, shown.failures), (5.0, 0))
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.run_for(61)  # sw_version is new: sent, and refused again
        self.assertEqual((self.server.config, self.server.config_errors), ([], []))
        polls = self.server.polls
        self.run_for(61)
        self.assertEqual((self.server.polls, self.server.config), (polls + 1, []))  # the same: not sent again
        self.attributes["apps"] = "app 2"
        self.server.config_errors = [503]
        self.run_for(61)
        self.assertEqual(fleet.snapshot().failures_in_row, 1)
        self.run_for(120)
        self.assertEqual(self.server.config[-1]["data"]["apps"], "app 2")
        self.stop()

    def test_an_error_that_is_not_the_servers_does_not_stop_polling(self) -> None:
        """An error that is no DDI answer (a state write on a full disk, the attributes' source
        failing) fails that poll, logged with its traceback, and polling goes on after the
        backoff; it ended polling for good."""

        class FailsOnce:
            calls = 0

            def keys(self) -> list[str]:
                FailsOnce.calls += 1
                if FailsOnce.calls == 1:
                    raise OSError(28, "No space left on device")
                return ["version"]

            def __getitem__(self, key: str) -> str:
                return "1.0"

        self.attributes = FailsOnce()  # type: ignore[assignment]
        fleet = self.start()
        self.run_for(8)
        self.assertEqual((fleet.snapshot().failures_in_row, fleet.snapshot().last_error), (1, "internal error (logged)"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.run_for(30)
        self.assertEqual(fleet.snapshot().failures_in_row, 0)
        self.assertEqual(self.server.config[-1]["data"], {"version": "1.0"})
        self.stop()

    def test_polls_at_the_servers_sleep_with_jitter(self) -> None:
        """The next poll waits the server's sleep times a jitter factor (here its midpoint, 1.0),
        never less than min_poll_interval, never more than a day."""
        self.server.sleep = "00:00:02"
        self.start()
        self.run_for(6)
        self.assertEqual(self.server.polls, 1)
        self.run_for(15)     # t=20: the first wait after the start, min_poll_interval x 1-2 (below)
        self.assertEqual(self.server.polls, 2)
        self.run_for(9)
        self.assertEqual(self.server.polls, 2)
        self.run_for(1)      # t=31: min_poll_interval (10 s) x 1-1.2, not 2 s
        self.assertEqual(self.server.polls, 3)
        # a sleep longer than a day (hawkBit's own limit, 23:59:59) waits a day: a server's
        # mistake (or a lie) must not stop the gateway polling until it restarts
        self.server.sleep = "99999:00:00"
        self.run_for(11)
        self.assertEqual(self.server.polls, 4)
        self.clock.advance(86300)
        self.assertEqual(self.server.polls, 4)
        self.run_for(200)
        self.assertEqual(self.server.polls, 5)

    def test_min_poll_interval_is_a_floor_whatever_the_jitter(self) -> None:
        """A server's sleep of 00:00:00 polls every min_poll_interval at the soonest: the jitter's
        range starts there (10-12 s with the defaults). It was 1 +/- poll_jitter around it, so the
        gateway polled every 9 s at the low end of the draw."""
        self.server.sleep = "00:00:00"
        self.start(uniform=lambda a, b: a)  # the soonest of every range
        self.run_for(1)
        self.assertEqual(self.server.polls, 1)
        for _ in range(3):
            self.run_for(9)
            polls = self.server.polls
            self.run_for(1)
            self.assertEqual(self.server.polls, polls + 1)

    def test_a_configuration_change_keeps_to_the_pace_of_the_polls(self) -> None:
        """A configuration change restarts the fleet service: its first poll came after a random
        part of min_poll_interval as at a start, so a change (or its revert) just after a poll that
        went well polled the server again within seconds. On the same server the first poll now
        comes min_poll_interval after the last one that went well at the soonest; on another
        server (base_url or tenant changed), as at a start."""
        old = self.start()
        self.run_for(6)  # the first poll at t=5 (the middle of 0-10 s)
        self.assertEqual(self.server.polls, 1)
        self.stop()
        new = self.start(previous=old)
        self.run_for(8)  # t=14: a start's poll would have come at t=11
        self.assertEqual(self.server.polls, 1)
        self.run_for(1)
        self.assertEqual(self.server.polls, 2)
        self.stop()
        moved = dataclasses.replace(SETTINGS, base_url="https://ddi2.example")
        self.start(moved, previous=new)
        self.run_for(6)  # at once after the poll at t=15: a start's first poll, 5 s on
        self.assertEqual(self.server.polls, 3)

    def test_the_wait_after_a_start_or_failed_polls_is_spread_over_the_interval(self) -> None:
        """The wait after the first poll that goes well after a start, or after failed polls, is
        drawn from 50-150 % of the sleep (later ones 1 +/- poll_jitter): a fleet started together
        (a power cut at a site) or back together (the server's outage ended) is spread over a whole
        interval from its next poll on, where +/- 10 % kept it bunched within a fifth of it for hours."""
        draws: list[tuple[float, float]] = []

        def uniform(a: float, b: float) -> float:
            draws.append((a, b))
            return (a + b) / 2

        self.start(uniform=uniform)
        self.run_for(6)
        self.assertEqual(draws, [(0.0, 10.0), (30.0, 90.0)])  # the first poll, then the wait after it
        self.run_for(60)
        self.assertEqual(draws[2:], [(54.0, 66.0)])
        self.server.errors = [(503, {})]
        self.run_for(60)
        self.run_for(15)
        self.assertEqual(draws[3:], [(10.0, 20.0), (30.0, 90.0)])  # the backoff, then spread again

    def test_feedback_answered_retry_after_holds_every_request_back(self) -> None:
        """A feedback answered 503 with Retry-After (an overloaded server) holds every request
        back for that long and up to half of it more: the steps that follow are not sent (they
        were, at each step, and the polls went on every minute). A feedback answered 429 at the
        poll's start fails that poll, which backs off instead of going on to its GET."""
        self.server.deployment = deployment("30", FILES)
        self.server.feedback_errors = [(503, {"Retry-After": "120"}), (429, {})]
        fleet = self.start()
        self.run_for(6)   # t=5: poll, configData, deploymentBase, the first step's feedback: 503, wait 150 s
        self.assertEqual((len(self.server.auth), self.server.polls), (4, 1))
        self.run_for(148)
        self.assertEqual(self.installer.archives, [ARCHIVE])  # installed meanwhile, nothing told
        self.assertEqual((len(self.server.auth), self.server.polls), (4, 1))
        self.run_for(2)   # t=155: the poll's feedback is answered 429: no GET, a failed poll
        self.assertEqual((len(self.server.auth), self.server.polls, fleet.snapshot().failures_in_row), (5, 1, 1))
        self.run_for(16)  # t=170 (15 s: the poll's backoff): the poll; the feedback backs off (30 s)
        self.assertEqual((self.server.polls, fleet.snapshot().failures_in_row, self.server.feedback), (2, 0, []))
        self.run_for(60)  # t=230: the next poll tells every step, in order
        self.assertEqual(self.server.executions(), [
            ("proceeding", "none"), ("download", "none"), ("downloaded", "none"), ("proceeding", "none"),
            ("proceeding", "none"), ("closed", "success")])
        self.assertEqual(self.server.polls, 3)

    def test_feedback_between_polls_answered_retry_after_puts_the_next_poll_off(self) -> None:
        """A feedback sent between two polls (a step of an operation, here a cancel on the gateway)
        answered with Retry-After puts off the poll that was due sooner: it goes once the hold is
        over, not at its time (where it would have sent that feedback and polled while held). (The
        same answer to a feedback a poll sends leaves the next poll to that poll's end: the test
        above.)"""
        self.file.stall = True
        self.server.deployment = deployment("33", FILES)
        fleet = self.start()
        self.run_for(8)  # t=5: the poll; downloading; the next poll due at t=65
        self.assertEqual((self.server.polls, fleet.snapshot().next_poll_in_s), (1, 57.0))
        self.server.feedback_errors = [(503, {"Retry-After": "100"})]
        self.assertIsNone(self.updates.handle_command("cancel", b'{"correlationId": "ddi-33"}'))
        self.stub.flush()  # t=8: CANCELED's feedback, answered 503 Retry-After: 100 (held 125 s)
        self.assertEqual((fleet.snapshot().state, fleet.snapshot().next_poll_in_s), ("held", 125.0))
        self.run_for(124)
        self.assertEqual(self.server.polls, 1)
        self.run_for(2)  # t=134: the poll, which sends the feedback
        self.assertEqual(self.server.polls, 2)
        self.assertEqual(self.server.executions()[-1], ("closed", "failure"))

    def test_a_server_that_never_answers_has_one_poll_at_a_time(self) -> None:
        """A server that takes every poll and never answers: each fails after request_timeout
        (30 s), logged as timed out, and the next waits its backoff; a poll falling due while one
        is under way (poll_now) joins it: never two requests at once, however long."""
        seen: list[float] = []
        clock = self.clock

        class Stalled(Resource):
            isLeaf = True

            def render(self, request: Any) -> int:
                seen.append(clock.seconds())
                return NOT_DONE_YET

        self.stub = StubTreq(Stalled())
        events = capture_log_events(self)
        fleet = self.start()
        self.run_for(34)
        self.assertEqual(self.successResultOf(self.updates.when_loaded()), None)
        self.assertIs(fleet.poll_now(), fleet.poll_now())  # due again meanwhile: the same poll
        self.assertEqual((seen, fleet.snapshot().failures_in_row), ([5.0], 0))
        self.run_for(1)      # t=35: timed out, next in 15 s
        self.assertEqual(fleet.snapshot().failures_in_row, 1)
        self.assertIn("no answer within 30 s (timed out)", fleet.snapshot().last_error)
        self.run_for(70)     # t=50: the next, timed out at t=80, next in 30 s (at t=110)
        self.assertEqual((seen, fleet.snapshot().failures_in_row), ([5.0, 50.0], 2))
        lines = [formatEvent(e) for e in events if "poll failed" in e.get("log_format", "")]
        self.assertRegex(lines[0], r"^fleet poll failed \(1 in a row\), next in 15s: GET https://ddi.example/"
                                   r".*: no answer within 30 s \(timed out\)$")

    def test_rolled_back_install_is_closed_failure_with_the_reason(self) -> None:
        """An app the health gate rolled back ends closed/failure, the installer's reason in details."""
        self.installer.answers.append(succeed(InstallResult(
            False, "rolled-back", "app", "2", "1", "program app exited with 4 in its health window", "")))
        self.server.deployment = deployment("6", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("closed", "failure"))
        details = "\n".join(self.server.feedback[-1][2]["status"]["details"])
        self.assertIn("rolled back to 1", details)
        self.assertIn("exited with 4", details)

    def test_malformed_deployment_is_closed_failure(self) -> None:
        """A deployment the gateway cannot read is refused with closed/failure naming the field."""
        self.server.deployment = {"id": "9", "deployment": {"download": "forced", "update": "later", "chunks": []}}
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions(), [("closed", "failure")])
        self.assertIn("deployment.update", self.server.feedback[0][2]["status"]["details"][0])
        self.run_for(61)
        self.assertEqual(len(self.server.feedback), 1)

    def test_fleet_waits_for_the_update_services_operations_after_a_restart(self) -> None:
        """The update service loads its operations in a thread, after the fleet service started.
        An install that ended while the fleet state had not recorded it (a crash between the two),
        offered again by the server, is reported once and never installed a second time, even
        when the operations take longer to load than the first poll waits; its version becomes
        sw_version. (The first poll found no operation and installed it again, and the start's
        catch-up saw no operation at all.)"""
        self.server.deployment = deployment("50", FILES)
        self.start()
        self.run_for(61)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.stop()
        self.server.feedback, self.server.config = [], []
        (self.state / "fleet" / "state.json").unlink()  # the crash came before it was written
        self.server.deployment = deployment("50", FILES)  # so the server never got the last feedback
        self.start(load_after=30)
        self.run_for(61)
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.assertEqual(self.server.executions(), [("closed", "success")])
        self.assertEqual(self.server.config[-1]["data"]["sw_version"], "2")

    def test_a_deployment_is_kept_until_the_server_took_its_end_and_never_run_twice(self) -> None:
        """The update service keeps a deployment's ended operation, however many others end after
        it, until the server has taken in its final feedback; once forgotten, an offer of it again
        (a server that lost it) is answered closed from what was reported, once, and not installed."""
        self.patch(updates_service, "KEEP_ENDED", 1)
        self.server.deployment = deployment("5", FILES)
        self.server.feedback_errors = [503] * 100  # nothing taken in
        self.start()
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-5"].status, Status.FINISHED_SUCCESS)
        self.updates.submit("install", kanto_request("op-1"))
        self.run_for(8)
        self.assertIn("ddi-5", self.updates.operations)  # its feedback is in the outbox
        self.server.feedback_errors = []
        self.run_for(61)  # the next poll sends the outbox
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertIsNone(self.server.deployment)
        self.updates.submit("install", kanto_request("op-2"))
        self.run_for(8)
        self.assertNotIn("ddi-5", self.updates.operations)
        self.server.offer_until_closed = False
        self.server.deployment = deployment("5", FILES)
        self.run_for(130)
        self.assertEqual(len(self.installer.archives), 1)  # ddi-5's (op-1 and op-2 have no server)
        self.assertEqual(self.server.executions()[-2:], [("closed", "success")] * 2)
        self.assertEqual(self.server.feedback[-1][2]["status"]["details"],
                         ["finished success: action 5 ended before; its operation is no longer kept"])
        self.stop()

    def test_cancel_of_an_action_that_ended_and_was_forgotten_is_rejected(self) -> None:
        """A cancelAction for an action that finished, whose operation the update service no
        longer keeps, is rejected as for one still kept (fleet.md: a finished action is answered
        rejected); it was answered closed/success 'it had not started' and the action was put
        among those never to start, so that the same action offered again (gooseBit's rollback
        to that software) was ignored for good."""
        self.patch(updates_service, "KEEP_ENDED", 1)
        self.install_in_turn(("5", "1"))
        assert self.fleet is not None
        self.updates.submit("install", kanto_request("op-1"))
        self.updates.submit("install", kanto_request("op-2"))
        self.run_for(8)
        self.assertNotIn("ddi-5", self.updates.operations)
        self.server.cancel = {"id": "c5", "cancelAction": {"stopId": "5"}}
        self.run_for(61)
        self.assertEqual(self.server.executions("cancelAction"), [("rejected", "none")])
        self.assertEqual(self.server.feedback[-1][2]["status"]["details"],
                         ["action 5 is finished_success; it can no longer be canceled"])
        self.assertEqual(self.fleet.state.canceled, [])
        self.install_in_turn(("6", "2"), ("5", "1"))  # a rollback to action 5's software installs it again
        self.assertEqual(len(self.installer.archives), 3)  # (op-1 and op-2 have no server)

    def test_the_state_remembers_the_last_actions_that_ended_and_those_it_needs(self) -> None:
        """state.json's reported map and canceled list keep the last ENDED_KEPT actions that ended
        (they grew with every action, for good), and besides them every action the state still
        needs: the one whose software is installed (offered again, it is told its end, not
        installed twice), one whose operation is still kept (here waiting for its maintenance
        window, which installs when it opens)."""
        self.patch(fleet_service, "ENDED_KEPT", 3)
        self.patch(updates_service, "KEEP_ENDED", 1)
        self.install_in_turn(("1", "1"))
        self.server.deployment = deployment("9", FILES, window="unavailable")
        self.run_for(61)
        self.server.offer_until_closed = True
        for action_id in ("20", "21", "22", "23", "24"):  # refused: closed/failure, no operation
            self.server.deployment = {"id": action_id, "deployment": {"download": "forced", "chunks": []}}
            self.run_for(61)
        self.server.deployment = None
        for action_id in ("50", "51", "52", "53", "54"):  # canceled before they started
            self.server.cancel = {"id": f"c{action_id}", "cancelAction": {"stopId": action_id}}
            self.run_for(61)
        self.server.cancel = None
        self.updates.submit("install", kanto_request("op-1"))
        self.run_for(8)
        self.assertNotIn("ddi-1", self.updates.operations)
        self.server.deployment = {"id": "25", "deployment": {"download": "forced", "chunks": []}}
        self.run_for(61)  # (a state write after the update service forgot ddi-1)
        saved = FleetState.load(self.state / "fleet" / "state.json")
        self.assertEqual(list(saved.reported), ["1", "9", "23", "24", "25"])
        self.assertEqual(saved.canceled, ["52", "53", "54"])
        self.server.offer_until_closed = False
        self.server.deployment = deployment("1", FILES)  # a server that lost action 1's end
        self.run_for(61)
        self.assertEqual(self.server.feedback[-1][2]["status"]["details"],
                         ["finished success: action 1 ended before; its operation is no longer kept"])
        self.server.deployment = deployment("9", FILES, window="available")
        self.run_for(61)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(self.installer.archives, [ARCHIVE] * 2)
        self.stop()

    def test_refused_deployment_offered_again_is_answered_once_per_start(self) -> None:
        """A server that lost the closed/failure of a deployment it offers again is told again once
        per process start, as of any action that ended (it was never told again after a restart)."""
        self.server.offer_until_closed = False
        self.server.deployment = {"id": "19", "deployment": {"download": "forced", "update": "later", "chunks": []}}
        self.start()
        self.run_for(61)
        self.assertEqual(self.server.executions(), [("closed", "failure")])
        self.stop()
        self.start()
        self.run_for(130)
        self.assertEqual(self.server.executions(), [("closed", "failure")] * 2)
        self.assertIn("deployment.update", self.server.feedback[1][2]["status"]["details"][0])

    def test_the_actions_said_again_are_remembered_the_last_ones_only(self) -> None:
        """The actions whose end was said again are remembered once each, the last RESENT_KEPT of
        them (one id per action forever before): an action offered again and again is told once."""
        self.patch(fleet_actions, "RESENT_KEPT", 2)
        self.server.offer_until_closed = False
        fleet = self.start()
        for action_id in ["19", "20", "21", "21"]:
            self.server.deployment = {"id": action_id, "deployment": {"download": "forced", "chunks": []}}
            self.run_for(61)
        self.assertEqual([action_id for _, action_id, _ in self.server.feedback], ["19", "20", "21"])
        self.assertEqual(list(fleet.actions.resent), ["20", "21"])
        self.stop()

    def test_deployment_with_unreadable_metadata_is_closed_failure(self) -> None:
        """A chunk whose metadata is neither a list nor an object is refused with closed/failure naming
        the field, and polling goes on (it stopped polling for good, with no feedback)."""
        body = deployment("20", FILES)
        body["deployment"]["chunks"][0]["metadata"] = 5
        self.server.deployment = body
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions(), [("closed", "failure")])
        self.assertIn("deployment.chunks[0].metadata", self.server.feedback[0][2]["status"]["details"][0])
        self.run_for(61)
        self.assertEqual(self.server.polls, 2)

    def test_nul_in_a_chunk_name_or_version_is_closed_failure(self) -> None:
        """A NUL in a chunk's name or version is a deployment the gateway cannot read, as it is in a
        Kanto request: closed/failure naming the field, nothing downloaded or installed."""
        for action_id, key in (("21", "name"), ("22", "version")):
            body = deployment(action_id, FILES)
            body["deployment"]["chunks"][0][key] = "2\0x"
            self.server.deployment = body
            self.server.feedback = []
            if self.fleet is None:
                self.start()
            self.run_for(61)
            self.assertEqual(self.server.executions(), [("closed", "failure")])
            self.assertIn(f"deployment.chunks[0].{key}", self.server.feedback[0][2]["status"]["details"][0])
        self.assertEqual((self.file.served, self.installer.archives), (0, []))

    def test_malformed_poll_answer_is_a_failed_poll(self) -> None:
        """A poll answer whose config or _links are not what DDI says (a link without an href) is
        a failed poll, backed off like one; polling goes on (it stopped for good)."""
        fleet = self.start()
        poll = self.server._poll
        self.server._poll = lambda: b'{"config": {}, "_links": {"deploymentBase": {}}}'  # type: ignore[method-assign]
        self.run_for(6)
        self.assertEqual(fleet.snapshot().failures_in_row, 1)
        self.assertIn("deploymentBase", fleet.snapshot().last_error)
        self.server._poll = poll  # type: ignore[method-assign]
        self.server.deployment = deployment("23", FILES)
        self.run_for(16)
        self.assertEqual((fleet.snapshot().failures_in_row, self.server.polls), (0, 1))
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.server._poll = lambda: b'{"config": {"polling": []}, "_links": []}'  # type: ignore[method-assign]
        self.run_for(61)
        self.assertEqual(fleet.snapshot().failures_in_row, 0)  # nothing linked, the default sleep: a poll like any other

    def test_an_answer_that_is_not_ddi_is_a_failed_poll(self) -> None:
        """A 200 whose body is not a DDI controller resource (a wrong base_url or tenant, a proxy's
        page: not a JSON object with a config object) is a failed poll, logged and backed off,
        not a quiet poll with nothing to do for ever."""
        fleet = self.start()
        poll = self.server._poll
        for failures, body in enumerate((b"", b"[]", b'{"status": "ok"}', b'{"config": null}'), start=1):
            self.server._poll = lambda body=body: body  # type: ignore[method-assign]
            for _ in range(int(SETTINGS.retry_max_delay)):
                if fleet.snapshot().failures_in_row == failures:
                    break
                self.run_for(1)
            self.assertEqual(fleet.snapshot().failures_in_row, failures, body)
            self.assertIn("not a DDI controller resource (no config object): check base_url and tenant",
                          fleet.snapshot().last_error)
        self.server._poll = poll  # type: ignore[method-assign]
        self.run_for(int(SETTINGS.retry_max_delay))
        self.assertEqual(fleet.snapshot().failures_in_row, 0)
        self.assertGreater(self.server.polls, 0)

    def test_a_damaged_state_file_is_set_aside(self) -> None:
        """A state.json that is not the fleet's is moved aside to state.json.damaged (kept for a
        person to look at, never overwritten by the next save) and the service starts afresh."""
        path = self.state / "fleet" / "state.json"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"[1, 2")
        self.server.deployment = deployment("24", FILES)
        self.start()
        self.assertEqual(path.with_name("state.json.damaged").read_bytes(), b"[1, 2")
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(FleetState.load(path).outbox, [])
        self.assertEqual(path.with_name("state.json.damaged").read_bytes(), b"[1, 2")

    def test_a_directory_in_place_of_the_state_file_is_set_aside(self) -> None:
        """A directory (or a loop of symbolic links) where state.json belongs is set aside as
        the unreadable file is, and the service starts afresh; it stopped the gateway's start
        ('[Errno 21] Is a directory')."""
        path = self.state / "fleet" / "state.json"
        path.mkdir(parents=True)
        self.server.deployment = deployment("24", FILES)
        self.start()
        self.assertTrue(path.with_name("state.json.damaged").is_dir())
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(FleetState.load(path).outbox, [])

    def test_a_state_file_of_the_wrong_shape_inside_is_set_aside(self) -> None:
        """A state.json that is a JSON object but not the fleet's shape inside (an action id that is
        no string, a status that is no object, a list where a map belongs...) is set aside too, and
        the service starts afresh: read as it was, its outbox failed every poll, for ever. (Keys it
        does not know are left alone: a newer version's file, after a rollback.)"""
        path = self.state / "fleet" / "state.json"
        for raw in ({"outbox": [{"kind": "deploymentBase", "action_id": 7, "status": {}}]},
                    {"outbox": [{"kind": "somewhere", "action_id": "7", "status": {}}]},
                    {"outbox": [{"kind": "cancelAction", "action_id": "7", "status": "closed"}]},
                    {"reported": {"7": 5}}, {"reported": ["ab"]}, {"cancels": {"7": None}},
                    {"canceled": "7"}, {"canceled": [7]}, {"config_hash": 5}, {"sw_version": ["1"]}):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(raw))
            with self.assertRaises(ValueError, msg=raw):
                FleetState.load(path)
        path.write_text(json.dumps({"sw_version": "3", "newer": 1, "outbox": [
            {"kind": "cancelAction", "action_id": "4", "status": {}, "newer": 2}]}))
        self.assertEqual(FleetState.load(path).sw_version, "3")
        self.assertEqual(FleetState.load(path).outbox, [Feedback("cancelAction", "4", {})])
        path.write_text(json.dumps({"sw_version": ["1"]}))
        self.server.deployment = deployment("25", FILES)
        self.start()
        self.assertEqual(json.loads(path.with_name("state.json.damaged").read_text()), {"sw_version": ["1"]})
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.stop()

    def test_a_time_no_float_holds_is_read_as_no_time(self) -> None:
        """A ``held_until`` or ``queued_at`` in state.json that is no finite number of seconds (an
        integer of 400 digits, ``NaN``, ``Infinity``: damage from outside, JSON that Python reads)
        counts as not given, as a time that is not a number does: no hold, the feedback queued at
        the start. The 400-digit integer raised OverflowError out of the load and the service's
        start; ``Infinity`` held every request back a day and a half at each start."""
        path = self.state / "fleet" / "state.json"
        path.parent.mkdir(parents=True)
        huge = "1" + "0" * 400
        for value in (huge, "NaN", "Infinity", "-Infinity"):
            path.write_text('{"held_until": %s, "outbox": [{"kind": "cancelAction", "action_id": "4", "status": {},'
                            ' "queued_at": %s}]}' % (value, value))
            state = FleetState.load(path, 50.0)
            self.assertEqual((state.held_until, state.outbox[0].queued_at), (0.0, 50.0), value)
        path.write_text('{"held_until": %s}' % huge)
        fleet = self.start()
        self.assertFalse(path.with_name("state.json.damaged").exists())
        self.run_for(8)
        self.assertGreater(self.server.polls, 0)
        self.assertEqual(fleet.snapshot().held_until, None)
        self.stop()

    def test_sw_version_stays_the_last_installed_after_a_restart(self) -> None:
        """sw_version is the version of the last deployment installed, after a restart too: the
        update service keeps every finished operation and loads them in file-name order (here
        ddi-31 before ddi-30), which made an earlier deployment's version the one reported again."""
        self.install_in_turn(("30", "1"), ("31", "2"))
        self.run_for(61)
        self.assertEqual(self.server.config[-1]["data"]["sw_version"], "2")
        sent = len(self.server.config)
        self.stop()
        self.start()
        self.run_for(61)
        self.assertEqual(self.fleet.state.sw_version if self.fleet else None, "2")
        self.assertEqual(len(self.server.config), sent)  # nothing changed: no configData

    def test_an_ended_action_offered_after_another_was_installed_is_installed_again(self) -> None:
        """gooseBit names an action by its software: assigning an earlier software again (a
        rollback) offers that software's old action id. Offered after another deployment was
        installed, it is a new request and is installed again (it was answered 'finished success'
        from before, installing nothing, and gooseBit then showed the old version as running).
        The last action offered again stays told again, never installed twice; so does one
        offered again after a restart."""
        self.install_in_turn(("1", "1"), ("2", "2"), ("1", "1"))
        self.assertEqual(len(self.installer.archives), 3)
        self.assertEqual(self.fleet.state.sw_version if self.fleet else None, "1")
        self.assertEqual([d for _, a, b in self.server.feedback if a == "1" for d in b["status"]["details"]
                          if "ended before" in d], [])
        self.server.offer_until_closed = False  # the last one offered again: told again, not installed
        self.server.deployment = deployment("1", FILES)
        self.run_for(130)
        self.assertEqual(len(self.installer.archives), 3)
        self.stop()
        self.start()
        self.run_for(61)
        self.assertEqual(len(self.installer.archives), 3)
        self.stop()

    def test_the_order_the_actions_ended_in_survives_a_restart(self) -> None:
        """state.json keeps the actions in the order they ended, which decides whether an earlier
        action offered again (gooseBit's rollback) was installed before the software in place: its
        keys were written sorted, so after a restart action 9, installed before action 10, was taken
        for one that ended after it ('9' > '10') and only told its old end, never installed again."""
        self.install_in_turn(("9", "1"), ("10", "2"))
        self.stop()
        self.start()
        self.install_in_turn(("9", "1"))
        self.assertEqual(len(self.installer.archives), 3)
        self.assertEqual(self.fleet.state.sw_version if self.fleet else None, "1")
        self.stop()

    def test_an_action_offered_while_another_runs_waits_for_its_end(self) -> None:
        """One deployment at a time: an action offered while another is still running (here
        installing) is not started until that one has ended, so the action the server offered
        last is installed last. Both ran at once, the earlier one ended after the later one, and
        the gateway stayed on the earlier software with both reported installed (seen on a real
        gateway: action 2 offered while action 1 downloaded, 1.0 installed after 2.0)."""
        pending: Deferred[Any] = Deferred()
        self.installer.answers.append(pending)
        first = deployment("20", FILES)
        first["deployment"]["chunks"][0]["version"] = "1"
        self.server.deployment = first
        self.start()
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-20"].status, Status.INSTALLING)
        second = deployment("21", FILES)
        second["deployment"]["chunks"][0]["version"] = "2"
        self.server.deployment = second
        self.run_for(61)
        self.assertNotIn("ddi-21", self.updates.operations)
        self.assertEqual(len(self.installer.archives), 1)
        pending.callback(InstallResult(True, "installed", "app", "1", None, "ok"))
        self.run_for(61)
        closed = [(a, b["status"]["details"][0]) for _, a, b in self.server.feedback
                  if b["status"]["execution"] == "closed"]
        self.assertEqual(closed, [("20", "finished success: app 1"), ("21", "finished success: app 2")])
        self.assertEqual(self.fleet.state.sw_version if self.fleet else None, "2")

    def test_an_action_that_waits_is_logged_once_and_again_when_it_waits_for_another(self) -> None:
        """'fleet action N waits: ...' is logged once per waiting action, and once more when what
        it waits for changes, not at every poll while it waits (it was, every poll)."""
        events = capture_log_events(self)
        first, second = Deferred(), Deferred()
        self.installer.answers.extend([first, second])
        self.server.deployment = deployment("20", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-20"].status, Status.INSTALLING)
        self.server.deployment = deployment("21", FILES)
        self.run_for(61 * 3)
        self.updates.submit("install", kanto_request("op-1"))  # not a deployment: nothing waits for it
        self.run_for(61)
        first.callback(InstallResult(True, "installed", "app", "2", None, "ok"))
        self.server.deployment = deployment("22", FILES)
        self.run_for(61)
        self.assertEqual(self.updates.operations["ddi-22"].status, Status.INSTALLING)
        self.server.deployment = deployment("21", FILES)
        self.run_for(61 * 3)
        waits = [formatEvent(e) for e in events if e.get("log_format", "").startswith("fleet action {id} waits")]
        self.assertEqual(waits, ["fleet action 21 waits: ddi-20 is still INSTALLING",
                                 "fleet action 21 waits: ddi-22 is still INSTALLING"])
        second.callback(InstallResult(True, "installed", "app", "2", None, "ok"))
        self.run_for(61)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(len(self.installer.archives), 3)
        self.stop()

    def test_an_earlier_action_offered_again_while_another_runs_is_installed_after_it(self) -> None:
        """gooseBit's rollback (an earlier software's action offered again) while another
        deployment runs waits for it too, and is then installed again, not only told its old end."""
        self.install_in_turn(("1", "1"), ("2", "2"))
        pending: Deferred[Any] = Deferred()
        self.installer.answers.append(pending)
        self.server.deployment = deployment("3", FILES)
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-3"].status, Status.INSTALLING)
        self.server.deployment = deployment("1", FILES)
        self.run_for(61)
        self.assertEqual(len(self.installer.archives), 3)
        pending.callback(InstallResult(True, "installed", "app", "2", None, "ok"))
        self.run_for(61)
        self.assertEqual(len(self.installer.archives), 4)
        self.assertEqual([a for _, a, b in self.server.feedback if b["status"]["execution"] == "closed"],
                         ["1", "2", "3", "1"])

    def test_update_skip_downloads_only(self) -> None:
        """update: skip (hawkBit's download-only) downloads and verifies, reports downloaded, installs nothing."""
        self.server.deployment = deployment("7", FILES, update="skip")
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("downloaded", "none"))
        self.assertNotIn(("closed", "success"), self.server.executions())
        self.assertEqual(self.installer.archives, [])
        self.run_for(61)
        self.assertEqual(self.file.served, len(ARCHIVE))

    def test_download_only_operations_are_released_once_downloaded_is_taken_in(self) -> None:
        """A download-only action (update: skip) ends its operation at downloaded, which is its
        last feedback: once the server took that in, the update service no longer holds the
        operation, which is forgotten as any other (KEEP_ENDED) once keep_downloads took its
        files. Every one was held for good (30 download-only actions in a row: 30 operations in
        memory, in GET /operations and as records on disk, beyond KEEP_ENDED; their files went
        by keep_downloads all the same). One downloaded to wait for its maintenance window stays
        held until it installs. A released one offered again is not downloaded again; its cancel
        is closed, nothing installed; offered for an install, it is downloaded and installed."""
        self.patch(updates_service, "KEEP_ENDED", 5)
        self.start()
        self.server.deployment = deployment("9", FILES, window="unavailable")
        self.run_for(61)
        for i in range(30):
            self.server.deployment = deployment(str(100 + i), FILES, update="skip")
            self.run_for(61)
            self.assertEqual(self.server.executions()[-1], ("downloaded", "none"))
        kept = {cid for cid in self.updates.operations if cid.startswith("ddi-")}
        # the 10 that keep their files (keep_downloads), the window's, nothing else
        self.assertEqual(kept, {"ddi-9"} | {f"ddi-{i}" for i in range(120, 130)})
        self.assertEqual(len(list((self.state / "updates" / "operations").glob("*.json"))), 11)
        self.assertEqual(self.file.served, 31 * len(ARCHIVE))
        self.server.deployment = deployment("100", FILES, update="skip")  # offered again: nothing to do
        self.run_for(61)
        self.assertEqual((self.file.served, len(self.server.feedback)), (31 * len(ARCHIVE), 31 * 3))
        self.server.deployment = None
        self.server.cancel = {"id": "c101", "cancelAction": {"stopId": "101"}}
        self.run_for(61)
        self.assertEqual(self.server.feedback[-1][2]["status"]["details"], ["action 101 canceled: nothing was installed"])
        self.server.cancel = None
        self.server.deployment = deployment("9", FILES, window="available")  # the window opens
        self.run_for(61)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.server.deployment = deployment("102", FILES)  # the server asks for the install after all
        self.run_for(61)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(self.installer.archives, [ARCHIVE] * 2)
        self.assertNotIn("102", self.fleet.state.download_only if self.fleet else [])
        self.stop()

    def test_download_only_actions_of_an_older_state_stay_held(self) -> None:
        """A state.json written before download_only was recorded loads; its downloaded actions,
        of a kind it did not say (download only, or waiting for a window), stay held as before."""
        self.patch(updates_service, "KEEP_ENDED", 1)
        self.server.deployment = deployment("7", FILES, update="skip")
        self.start()
        self.run_for(8)
        self.stop()
        path = self.state / "fleet" / "state.json"
        raw = json.loads(path.read_text())
        self.assertEqual(raw.pop("download_only"), ["7"])
        path.write_text(json.dumps(raw))
        self.server.deployment = None
        self.start()
        for i in range(12):
            self.updates.submit("download", kanto_request(f"op-{i}"))
            self.run_for(8)
        self.assertIn("ddi-7", self.updates.operations)
        self.assertEqual(self.fleet.state.download_only if self.fleet else None, [])
        self.stop()

    def test_download_skip_waits(self) -> None:
        """download: skip starts nothing until the server changes its mind."""
        self.server.deployment = deployment("8", FILES, download="skip", update="skip")
        self.start()
        self.run_for(8)
        self.assertEqual((self.server.feedback, self.file.served), ([], 0))
        self.server.deployment = deployment("8", FILES, download="attempt", update="attempt")
        self.run_for(61)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))

    def test_maintenance_window_downloads_now_installs_when_open(self) -> None:
        """With the window unavailable the artifact is downloaded at once and the install waits;
        once the window is available it installs from the file already there (fetched once)."""
        self.server.deployment = deployment("10", FILES, window="unavailable")
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("downloaded", "none"))
        self.assertEqual(self.installer.archives, [])
        self.run_for(61)
        self.assertEqual(self.installer.archives, [])
        self.server.deployment = deployment("10", FILES, window="available")
        self.run_for(61)
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual(self.file.served, len(ARCHIVE))

    def test_an_action_waiting_for_confirmation_is_confirmed_then_installed(self) -> None:
        """hawkBit's confirmation flow: the poll links ``confirmationBase/{actionId}`` instead of
        a ``deploymentBase`` until the device consents. The gateway, which has no user to ask,
        POSTs ``{"confirmation": "confirmed", "details": [...]}`` on its feedback, and polls
        again after ``min_poll_interval`` (not the server's sleep), where the deployment comes
        and is installed. It ignored the link: the action waited for ever, silently."""
        self.server.deployment = deployment("12", FILES)
        self.server.waiting_confirmation = True
        self.server.sleep = "00:05:00"
        self.start()
        self.run_for(8)
        confirmations = [(a, b) for k, a, b in self.server.feedback if k == "confirmationBase"]
        self.assertEqual(confirmations, [("12", {"confirmation": "confirmed",
                                                 "details": ["confirmed by the gateway, which has no user to ask"]})])
        self.assertEqual(self.installer.archives, [])
        self.run_for(20)  # (10-12 s: min_poll_interval, not the 5 minutes of the server's sleep)
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))

    def wait_for_confirmation_answering(self, answer: Callable[[Any, Any], Any]) -> None:
        """The server offers action 12 for confirmation (sleep 5 minutes), each of its answers
        passed through ``answer(request, answer)``."""
        self.server.deployment = deployment("12", FILES)
        self.server.waiting_confirmation = True
        self.server.sleep = "00:05:00"
        render = self.server.render
        self.server.render = lambda request: answer(request, render(request))  # type: ignore[method-assign]

    def test_an_action_still_waiting_for_confirmation_is_confirmed_again_at_the_servers_pace(self) -> None:
        """A server that links the same action's ``confirmationBase`` again after its
        confirmation (one that did not take it in, or keeps it waiting) has it confirmed again
        at its own ``sleep``: only a newly confirmed action brings the next poll forward to
        ``min_poll_interval``. The gateway confirmed it again every 10 s for as long as the
        server kept it waiting, whatever the server's sleep (30 POSTs in 5 minutes)."""
        def kept_waiting(request: Any, answer: Any) -> Any:
            self.server.waiting_confirmation = True  # (the confirmation is not taken in)
            return answer
        self.wait_for_confirmation_answering(kept_waiting)
        self.start()
        self.run_for(8)
        self.run_for(20)  # (the poll at min_poll_interval after the first confirmation)
        self.run_for(300)  # (the server's sleep)
        confirmations = [a for k, a, _ in self.server.feedback if k == "confirmationBase"]
        self.assertEqual(confirmations, ["12", "12", "12"])
        self.run_for(300)
        self.assertEqual(len([k for k, _, _ in self.server.feedback if k == "confirmationBase"]), 4)

    def test_a_confirmation_taken_in_with_an_answer_that_is_not_json_is_confirmed(self) -> None:
        """A server that takes the confirmation in (2xx) but answers with a body that is not JSON
        (``OK``, as a proxy or another DDI server may) has it confirmed: the deployment is
        installed after min_poll_interval, as a feedback so answered is taken in. The poll
        failed (logged, a backoff) although the server had the confirmation."""
        events = capture_log_events(self)
        def answering_ok(request: Any, answer: Any) -> Any:
            return b"OK" if request.uri.split(b"?")[0].endswith(b"/confirmationBase/12/feedback") else answer
        self.wait_for_confirmation_answering(answering_ok)
        self.start()
        self.run_for(28)
        self.assertEqual([a for k, a, _ in self.server.feedback if k == "confirmationBase"], ["12"])
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.assertEqual([formatEvent(e) for e in events if "fleet poll failed" in formatEvent(e)], [])

    def test_a_confirmation_base_naming_no_action_fails_the_poll(self) -> None:
        """A ``confirmationBase`` answer without an action id is no action to confirm: the poll
        fails (logged, tried again after its backoff), nothing is confirmed."""
        events = capture_log_events(self)
        self.server.deployment = deployment("", FILES)
        self.server.waiting_confirmation = True
        self.start()
        self.run_for(8)
        self.assertEqual([k for k, _, _ in self.server.feedback], [])
        self.assertIn("the confirmationBase answer names no action (id: '')",
                      " ".join(formatEvent(e) for e in events if "fleet poll failed" in formatEvent(e)))

    def test_cancel_while_downloading_is_closed(self) -> None:
        """A cancelAction for an action still downloading stops it; the answer is closed/success."""
        self.file.stall = True
        self.server.deployment = deployment("11", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-11"].status, Status.DOWNLOADING)
        self.server.deployment = None
        self.server.cancel = {"id": "11", "cancelAction": {"stopId": "11"}}
        self.run_for(61)
        self.assertEqual(self.updates.operations["ddi-11"].status, Status.FINISHED_CANCELED)
        self.assertEqual(self.server.executions("cancelAction"), [("closed", "success")])
        self.assertNotIn(("closed", "failure"), self.server.executions())  # answered on the cancel only
        self.assertEqual(self.installer.archives, [])
        self.run_for(61)  # offered again until the server takes it in: answered once
        self.assertEqual(len(self.server.executions("cancelAction")), 1)
        self.stop()
        self.start()  # nor taken for a cancel of the gateway's own after a restart
        self.run_for(61)
        self.assertNotIn(("closed", "failure"), self.server.executions())

    def artifacts(self, action_id: str) -> list[Path]:
        """The files the update service keeps for the action's operation."""
        key = hashlib.sha256(f"ddi-{action_id}".encode()).hexdigest()[:32]
        return [p for p in (self.state / "updates" / "artifacts" / key).rglob("*") if p.is_file()]

    def test_cancel_of_a_downloaded_action_removes_its_files(self) -> None:
        """A cancelAction for an action only downloaded (update: skip, or waiting for its
        maintenance window) is closed/success and its downloaded files are removed: they are
        never installed now (they stayed on disk for good)."""
        self.start()
        for action_id, skip, window in (("30", "skip", None), ("31", "forced", "unavailable")):
            self.server.deployment = deployment(action_id, FILES, update=skip, window=window)
            self.run_for(61)
            self.assertEqual(self.updates.operations[f"ddi-{action_id}"].status, Status.FINISHED_SUCCESS)
            self.assertEqual(len(self.artifacts(action_id)), 1)
            self.server.deployment = None
            self.server.cancel = {"id": action_id, "cancelAction": {"stopId": action_id}}
            self.run_for(61)
            self.assertEqual(self.server.executions("cancelAction")[-1], ("closed", "success"))
            self.assertEqual(self.server.feedback[-1][2]["status"]["details"],
                             [f"action {action_id} canceled: nothing was installed; its downloaded files were removed"])
            self.assertEqual(self.artifacts(action_id), [])
        self.assertEqual(self.installer.archives, [])

    def test_a_cancel_on_the_gateway_closes_the_action_as_failed(self) -> None:
        """An update cancel request on the gateway (Kanto's, to the ddi-<id> operation) ends a
        deployment the server is waiting for: hawkBit is told closed/failure (DDI: the target
        that will not proceed sends closed, FAILURE), and stops offering it; it was told
        nothing and waited for the action forever. Once, also across a restart."""
        self.file.stall = True
        self.server.deployment = deployment("32", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-32"].status, Status.DOWNLOADING)
        self.assertIsNone(self.updates.handle_command("cancel", b'{"correlationId": "ddi-32"}'))
        self.run_for(61)
        self.assertEqual(self.updates.operations["ddi-32"].status, Status.FINISHED_CANCELED)
        self.assertEqual(self.server.executions()[-1], ("closed", "failure"))
        self.assertIn("canceled on the gateway (an update cancel request), not by the server: nothing was installed",
                      self.server.feedback[-1][2]["status"]["details"])
        self.assertIsNone(self.server.deployment)  # closed: no longer offered
        self.assertEqual((self.server.executions("cancelAction"), self.installer.archives), ([], []))
        self.assertEqual(self.artifacts("32"), [])
        sent = len(self.server.feedback)
        self.stop()
        self.start()
        self.run_for(61)
        self.assertEqual(len(self.server.feedback), sent)

    def test_a_local_update_named_as_a_deployment_is_refused_and_not_reported(self) -> None:
        """A Kanto install request whose correlationId is ddi-<n> is refused (the prefix is the
        fleet's, docs/updates.md), so hawkBit hears nothing of it; it was run and its every step
        went to the server as feedback on action n, which the gateway never got."""
        self.start()
        self.run_for(8)
        refused = self.updates.handle_command("install", json.dumps(kanto_request("ddi-7")).encode())
        self.assertEqual(refused, "correlationId: 'ddi-7' begins with 'ddi-', which is reserved for the fleet's "
                                  "hawkBit deployments; use another id")
        self.run_for(61)
        self.assertNotIn("ddi-7", self.updates.operations)
        self.assertEqual((self.server.feedback, self.installer.archives), ([], []))

    def test_cancel_cut_short_by_a_restart_is_carried_out_after_it(self) -> None:
        """A cancel recorded by the fleet while the gateway died before the download stopped is
        carried out when the server offers it again after the restart: the download stops, nothing
        is installed, the answer is closed/success (the resumed download went on and installed)."""
        self.file.stall = True
        self.server.deployment = deployment("40", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-40"].status, Status.DOWNLOADING)
        self.updates.cancel = lambda request: None  # type: ignore[method-assign]  # dies before it acts
        self.server.cancel = {"id": "41", "cancelAction": {"stopId": "40"}}
        self.run_for(61)
        self.assertEqual(FleetState.load(self.state / "fleet" / "state.json").cancels, {"40": "41"})
        self.stop()
        self.start()
        self.run_for(61)
        self.assertEqual(self.updates.operations["ddi-40"].status, Status.FINISHED_CANCELED)
        self.assertEqual(self.server.executions("cancelAction"), [("closed", "success")])
        self.assertEqual(self.installer.archives, [])

    def test_cancel_while_installing_is_rejected(self) -> None:
        """An install under way cannot be canceled: the answer is rejected, the install goes on."""
        pending: Deferred[Any] = Deferred()
        self.installer.answers.append(pending)
        self.server.deployment = deployment("12", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.updates.operations["ddi-12"].status, Status.INSTALLING)
        self.server.cancel = {"id": "12", "cancelAction": {"stopId": "12"}}
        self.run_for(61)
        self.assertEqual(self.server.executions("cancelAction"), [("rejected", "none")])
        self.assertIn("can no longer be canceled", self.server.feedback[-1][2]["status"]["details"][0])
        pending.callback(InstallResult(True, "installed", "app", "2", None, "ok"))
        self.run_for(2)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))

    def test_cancel_of_an_action_not_started(self) -> None:
        """A cancel for an action the gateway never started is closed, and the action never starts."""
        self.server.cancel = {"id": "13", "cancelAction": {"stopId": "13"}}
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions("cancelAction"), [("closed", "success")])
        self.server.cancel = None
        self.server.deployment = deployment("13", FILES)
        self.run_for(61)
        self.assertEqual(self.file.served, 0)

    def test_401_429_and_5xx_back_off(self) -> None:
        """Failed polls back off (doubling from min_poll_interval, midpoint of [cap/2, cap]); a 429's
        Retry-After is honoured; polling goes on normally after, which is logged once with how
        long the polls failed (fleet.md)."""
        self.server.errors = [(401, {}), (503, {}), (429, {"Retry-After": "300"})]
        fleet = self.start()
        self.run_for(6)      # t=5: 401 -> next in 15 (cap 20)
        self.assertEqual((fleet.snapshot().failures_in_row, len(self.server.auth)), (1, 1))
        self.run_for(15)     # t=20: 503 -> next in 30 (cap 40)
        self.assertEqual(fleet.snapshot().failures_in_row, 2)
        self.assertIn("HTTP 503", fleet.snapshot().last_error)
        self.run_for(30)     # t=50: 429, Retry-After 300 -> next in 375 (300 + up to half of it more)
        self.assertEqual(fleet.snapshot().failures_in_row, 3)
        self.run_for(365)    # t=415: a fleet told to wait 300 s came back in the same second
        self.assertEqual(self.server.polls, 0)
        events = capture_log_events(self)
        self.run_for(15)
        self.assertEqual((self.server.polls, fleet.snapshot().failures_in_row), (1, 0))
        # the recovery is told once (nothing was logged when polls went well again), with how long
        lines = [formatEvent(e) for e in events if "succeed again" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], r"^fleet polls succeed again after 3 failed in a row \(42\ds down; the last: .*429")
        self.run_for(600)
        self.assertEqual(len([e for e in events if "succeed again" in e.get("log_format", "")]), 1)

    def test_feedback_refused_for_good_is_dropped_and_shown(self) -> None:
        """A feedback the server refuses as it is (a 4xx other than 401, 403, 408 and 429) is
        logged and dropped, and the steps after it go on (fleet.md, Restarts); it is the
        snapshot's ``last_error`` too, a feedback the server did not take (readside.md): it was
        in the log only, and ``gatewayctl fleet`` said ``last error none``."""
        last_error = self.assert_first_feedback_dropped("31", 422)
        self.assertRegex(last_error, r"^POST https://ddi.example/.*/deploymentBase/31/feedback: HTTP 422")

    def assert_first_feedback_dropped(self, action: str,
                                      error: int | tuple[int, dict[str, str], bytes]) -> str:
        """Run a deployment whose first feedback the server answers ``error``: that one is dropped
        (logged once, counted), the steps after it go on, none waits; the snapshot's ``last_error``."""
        self.server.deployment = deployment(action, FILES)
        self.server.feedback_errors = [error]
        events = capture_log_events(self)
        fleet = self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions(), [
            ("download", "none"), ("downloaded", "none"), ("proceeding", "none"), ("proceeding", "none"),
            ("closed", "success")])
        snapshot = fleet.snapshot()
        self.assertEqual((snapshot.feedback_waiting, snapshot.failures, snapshot.feedback_dropped), (0, 0, 1))
        self.assertEqual(len([e for e in events if "refused by the server, dropped" in e.get("log_format", "")]), 1)
        return snapshot.last_error

    def test_a_retry_after_holds_the_requests_back_across_a_restart(self) -> None:
        """The server's Retry-After holds every request back across a restart of the service (a
        configuration change restarts it in-process; a reboot): it was kept in memory only, and
        the new service sent its feedback and polled within ``min_poll_interval`` (seen on a
        real gateway: Retry-After 120, a ``config set`` 4 s later, a feedback and a poll 5 s
        after). The hold is read back from ``state.json`` as a time of day, a day and a half
        at most from the start (a clock stepped back does not make it longer)."""
        self.server.errors = [(503, {"Retry-After": "120"})]
        fleet = self.start()
        self.run_for(6)   # t=5: 503, every request held until t=155 (120 + the midpoint of 60 more)
        self.assertEqual((len(self.server.auth), fleet.snapshot().state), (1, "held"))
        self.assertEqual(fleet.snapshot().held_until, 155.0)
        self.stop()
        fleet = self.start()
        self.assertEqual((fleet.snapshot().state, fleet.snapshot().held_until), ("held", 155.0))
        self.run_for(148)  # t=154: nothing sent
        self.assertEqual(len(self.server.auth), 1)
        self.run_for(2)
        self.assertEqual((self.server.polls, fleet.snapshot().held_until), (1, None))
        self.stop()
        state = json.loads((self.state / "fleet" / "state.json").read_text())
        state["held_until"] = self.clock.seconds() + 10 * 86400  # a wall clock stepped back days
        (self.state / "fleet" / "state.json").write_text(json.dumps(state))
        fleet = self.start()
        self.assertEqual(fleet.snapshot().held_until, self.clock.seconds() + MAX_HOLD)
        self.stop()
        self.assertTrue(state["config_hash"])
        state["held_until"] = "soon"  # not a number: no hold, and the rest of the state is kept
        (self.state / "fleet" / "state.json").write_text(json.dumps(state))
        fleet = self.start()
        self.assertEqual((fleet.snapshot().held_until, fleet.state.config_hash), (None, state["config_hash"]))
        self.stop()
        state["clock"] = ["boot-1", "noon"]  # not a clock: its times count as another clock's, the rest is kept
        (self.state / "fleet" / "state.json").write_text(json.dumps(state))
        fleet = self.start()
        self.assertEqual((fleet.state.clock, fleet.state.config_hash), (None, state["config_hash"]))

    def test_an_absurd_retry_after_holds_the_gateway_a_day_at_most(self) -> None:
        """A Retry-After of a trillion seconds (a lie, a typo) is taken as a day, plus the random
        part of up to retry_max_delay (600 s): the gateway polls again then, not never."""
        self.server.errors = [(429, {"Retry-After": "1000000000000"})]
        fleet = self.start()
        self.run_for(6)      # t=5: 429 -> next in 86,700 s (a day + 300, the midpoint)
        self.assertEqual(fleet.snapshot().failures_in_row, 1)
        self.clock.advance(86690)
        self.run_for(8)
        self.assertEqual(self.server.polls, 0)
        self.run_for(2)
        self.assertEqual((self.server.polls, fleet.snapshot().failures_in_row), (1, 0))

    def test_the_time_down_is_steady_across_a_clock_step(self) -> None:
        """The recovery line's time down is counted on the steady clock: NTP stepping the wall
        clock back a day while the polls failed made it about -86,000 s."""
        self.clock = SteppingClock()
        self.server.errors = [(503, {})]
        fleet = self.start()
        self.run_for(6)      # t=5: 503 -> next in 15
        self.assertEqual(fleet.snapshot().failures_in_row, 1)
        self.clock.step(-86400)
        events = capture_log_events(self)
        self.run_for(15)
        lines = [formatEvent(e) for e in events if "succeed again" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], r"after 1 failed in a row \(1\ds down; ")

    def test_feedback_waiting_does_not_make_every_failed_poll_a_new_cause(self) -> None:
        """A server away for 40 minutes with feedback waiting is still a line for the first failed
        poll and one each 10 minutes (fleet.md): the feedback's own failure (its POST's 503) was
        taken for the poll's cause before it, so each poll that tried the feedback first was
        logged at once as a new cause (14 lines here instead of 4)."""
        settings = dataclasses.replace(SETTINGS, retry_max_delay=60.0)
        FleetState([Feedback("deploymentBase", "3", {"execution": "closed"}, 0.0)]).save(
            self.state / "fleet" / "state.json")
        self.server.errors = [(503, {})] * 400
        events = capture_log_events(self)
        fleet = self.start(settings)
        self.run_for(2400)
        self.assertGreater(fleet.snapshot().failures_in_row, 45)
        lines = [formatEvent(e) for e in events if "poll failed" in e.get("log_format", "")]
        self.assertEqual(len(lines), 4, lines)

    def test_a_server_away_for_hours_is_a_line_per_cause_and_ten_minutes(self) -> None:
        """docs/install.md (Logs): each failed poll was a line, one a minute for as long as the
        server is away with ``retry_max_delay: 60``. Now the first failure is logged, a new cause
        at once, and the same cause at most once every 10 minutes (its count in a row says how
        many failed meanwhile); after polls went well, the next failure is logged at once."""
        settings = dataclasses.replace(SETTINGS, retry_max_delay=60.0)
        self.server.errors = [(503, {})] * 200
        events = capture_log_events(self)
        fleet = self.start(settings)

        def failed_lines() -> list[str]:
            return [formatEvent(e) for e in events if "poll failed" in e.get("log_format", "")]

        self.run_for(2400)
        self.assertGreater(fleet.snapshot().failures_in_row, 45)
        lines = failed_lines()
        self.assertEqual(len(lines), 4, (fleet.snapshot().failures_in_row, lines))  # the first, then one each 10 minutes
        self.assertRegex(lines[1], r"^fleet poll failed \(1\d in a row\)")
        self.server.errors[:] = [(401, {}), (503, {})]  # a new cause, then the first again
        self.run_for(120)
        self.assertEqual(len(self.server.errors), 0)
        later = failed_lines()[4:]
        self.assertEqual(len(later), 2, later)
        self.assertIn("HTTP 401", later[0])
        self.run_for(120)  # polls go well: the next failure is logged at once
        self.assertEqual(fleet.snapshot().failures_in_row, 0)
        self.server.errors[:] = [(503, {})]
        self.run_for(60)
        self.assertEqual(len(failed_lines()), 7)

    def test_unaccepted_feedback_is_kept_and_sent_again_after_a_restart(self) -> None:
        """Feedback the server did not take stays in the persisted outbox; after a restart it is sent
        (once), the finished action is not installed again, and each says when its step happened
        (DDI's ``timestamp``, milliseconds since the epoch: hawkBit recorded the steps at their
        arrival, after the restart)."""
        self.clock.advance(1796211823.25)  # (a clock that is set: before 2024, no timestamp is sent)
        self.server.deployment = deployment("14", FILES)
        self.server.feedback_errors = [503] * 100
        self.start()
        self.run_for(8)
        self.assertEqual(self.installer.archives, [ARCHIVE])
        saved = FleetState.load(self.state / "fleet" / "state.json")
        self.assertEqual(len(saved.outbox), 6)
        self.stop()
        self.server.feedback_errors = []
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions(), [
            ("proceeding", "none"), ("download", "none"), ("downloaded", "none"), ("proceeding", "none"),
            ("proceeding", "none"), ("closed", "success")])
        self.run_for(61)
        self.assertEqual(len(self.server.feedback), 6)
        self.assertEqual(self.installer.archives, [ARCHIVE])
        stamps = [body["timestamp"] for _, _, body in self.server.feedback]
        self.assertEqual(stamps, [round(f.queued_at * 1000) for f in saved.outbox if f.queued_at is not None])
        self.assertLess(stamps[-1], (1796211823.25 + 8) * 1000)  # (sent after the restart, at 8 s or later)
        self.assertGreaterEqual(stamps[0], 1796211823250)

    def test_feedback_of_a_clock_not_set_has_no_timestamp(self) -> None:
        """A step that happened while the gateway's clock was not set (before 2024: no real-time
        clock, no NTP yet; the fake clock starts at 1970) is sent without DDI's ``timestamp``:
        the server records its arrival rather than 1970."""
        self.server.deployment = deployment("15", FILES)
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.assertEqual([body for _, _, body in self.server.feedback if "timestamp" in body], [])

    def test_feedback_the_server_keeps_refusing_backs_off_and_is_one_line_per_ten_minutes(self) -> None:
        """A server that polls well but keeps refusing feedback (503 for an hour: its feedback
        endpoint down behind a proxy) got it again at every poll, every 11 s here (over 300 POSTs
        an hour), and had a warning at every poll and at every step; now the feedback backs off
        as failed polls do (15, 30, then 45 s: half to all of retry_max_delay, 60 s here) while the
        polls go on, the first refusal is logged, then one every 10 minutes with the count since
        the last, and the first refusal after feedback was taken again is news at once."""
        events = capture_log_events(self)
        self.server.sleep = "00:00:10"
        self.server.deployment = deployment("19", FILES)
        self.server.feedback_errors = [503] * 10000
        self.start(dataclasses.replace(SETTINGS, retry_max_delay=60.0))
        self.run_for(3600)
        self.assertGreater(self.server.polls, 300)
        # 67 POSTs in the hour: 15 s, 30 s, then every 45 s, each at the first poll after it
        self.assertEqual(10000 - len(self.server.feedback_errors), 67)
        lines = [formatEvent(e) for e in events if "feedback not accepted" in e.get("log_format", "")]
        self.assertEqual(len(lines), 6, lines)  # at t=5, then every 10 minutes
        self.assertTrue(lines[0].startswith("fleet feedback not accepted, kept for later ("
                                            "logged at most once every 10 minutes until one is"
                                            " accepted): POST https://ddi.example/"), lines[0])
        self.assertIn("(13 since the last such line", lines[1])  # (before: 60, one at every poll and step)
        # docs/fleet.md quotes the first line as it is (it showed the count of a later one)
        page = " ".join((Path(__file__).resolve().parents[2] / "docs" / "fleet.md").read_text().split())
        first = lines[0].split(": POST ")[0]
        self.assertIn(f"`{first}: <why>`", page)
        self.server.feedback_errors = []
        self.run_for(60)
        self.assertEqual(len(self.server.feedback), 6)  # each step once, in order
        self.server.deployment = deployment("20", FILES)
        self.server.feedback_errors = [503]
        del events[:]
        self.run_for(20)
        self.assertEqual(len([e for e in events if "feedback not accepted" in e.get("log_format", "")]), 1)

    def test_a_stopped_service_writes_no_state_when_its_last_feedback_is_answered(self) -> None:
        """A feedback request still under way when the service stops (a configuration change
        restarts the services in-process) and answered all the same (a request that did not end
        when the stop gave it up) leaves the state file alone: the stopped service wrote its own,
        older state over the file the next service had loaded and written since. The feedback stays in the outbox and
        is sent again by the next service (the server may get it twice, never not at all)."""
        self.server.deployment = deployment("17", FILES)
        fleet = self.start()
        answers: list[Deferred[Any]] = []

        def feedback(kind: str, action_id: str, status: dict[str, Any], happened_at: float | None) -> Deferred[Any]:
            answers.append(Deferred())
            return answers[-1]

        fleet.ddi.feedback = feedback  # type: ignore[method-assign]  # a server that has not answered yet
        self.run_for(8)
        self.assertEqual((len(answers), self.updates.operations["ddi-17"].status), (1, Status.FINISHED_SUCCESS))
        path = self.state / "fleet" / "state.json"
        self.stop()
        written = path.read_bytes()
        answers[0].callback(None)
        self.assertEqual(path.read_bytes(), written)
        self.assertEqual(len(answers), 1)
        self.start()
        self.run_for(61)
        self.assertEqual(self.server.executions(), [
            ("proceeding", "none"), ("download", "none"), ("downloaded", "none"), ("proceeding", "none"),
            ("proceeding", "none"), ("closed", "success")])

    def test_ddi_requests_go_one_at_a_time_in_order(self) -> None:
        """No DDI request starts while another is unanswered: the poll due while the closed
        feedback is still under way, and the configData PUT it brings (the new sw_version), wait
        for its answer and then go in order. They went beside it: gooseBit loads the device at
        each request's start and saves it whole, so a configData PUT taken in beside the closed
        feedback wrote its copy's ``Running`` back over ``Finished`` (a fleet test seen
        ``Finished``, then ``('Running', '2.0.0')``)."""
        self.server.deployment = deployment("22", FILES)
        render = self.server.render
        held: list[Any] = []
        started: list[tuple[str, str, bool]] = []  # (method, path, whether another was unanswered)

        def render_holding_the_closed_feedback(request: Any) -> Any:
            path = request.path.decode()
            if path.startswith("/artifacts/"):
                return render(request)  # (downloads are not DDI control requests)
            started.append((request.method.decode(), path[len(ROOT):], bool(held)))
            body = request.content.read()
            request.content.seek(0)
            if request.method == b"POST" and b'"closed"' in body:
                held.append(request)
                return NOT_DONE_YET
            return render(request)

        self.server.render = render_holding_the_closed_feedback  # type: ignore[method-assign]
        fleet = self.start()
        self.run_for(8)
        self.assertEqual((len(held), self.updates.operations["ddi-22"].status), (1, Status.FINISHED_SUCCESS))
        fleet.poll_now()  # the next poll falls due while the server works on the feedback
        self.stub.flush()
        self.assertEqual([s[:2] for s in started if s[2]], [])
        self.assertEqual(started[-1][:2], ("POST", "/deploymentBase/22/feedback"))
        request = held.pop()
        request.write(render(request))
        request.finish()
        self.stub.flush()
        self.assertEqual([s[:2] for s in started[-3:]], [
            ("POST", "/deploymentBase/22/feedback"), ("GET", ""), ("PUT", "/configData")])
        self.assertEqual(self.server.config[-1]["data"]["sw_version"], "2")
        self.assertEqual(self.server.executions()[-1], ("closed", "success"))
        self.stop()

    def test_a_request_under_way_at_a_stop_ends_before_the_next_services_first(self) -> None:
        """A feedback the server still holds when the service stops (a configuration change
        restarts the services in-process) is given up by the stop, its connection closed, before
        the stop has ended; a poll waiting for its turn behind it is never sent. The next
        service's first request so comes after the old one's end, never beside it (it went
        beside it: each service has its own client; a stale ``proceeding`` taken in after the new
        service's ``closed`` made gooseBit show ``Running`` again). What was given up stays in
        the outbox and is sent again, in order; the stop logs no failure."""
        events = capture_log_events(self)
        self.server.deployment = deployment("24", FILES)
        render = self.server.render
        held: list[Any] = []
        seen: list[str] = []  # the DDI requests the server got, and when the held one ended

        def render_holding_the_downloaded_feedback(request: Any) -> Any:
            path = request.path.decode()
            if path.startswith("/artifacts/"):
                return render(request)  # (downloads are not DDI control requests)
            body = request.content.read()
            request.content.seek(0)
            execution = json.loads(body)["status"]["execution"] if path.endswith("/feedback") else ""
            seen.append(f"{request.method.decode()} {path[len(ROOT):]} {execution}".rstrip())
            if b'"downloaded"' in body and not held:
                held.append(request)
                request.notifyFinish().addBoth(lambda _: seen.append("held one ended"))
                return NOT_DONE_YET
            return render(request)

        self.server.render = render_holding_the_downloaded_feedback  # type: ignore[method-assign]
        fleet = self.start()
        self.run_for(8)
        self.assertEqual((len(held), self.updates.operations["ddi-24"].status), (1, Status.FINISHED_SUCCESS))
        fleet.poll_now()  # a poll falls due: it waits for its turn
        self.stub.flush()
        self.assertEqual(seen[-1], "POST /deploymentBase/24/feedback downloaded")
        stopped = fleet.stopService()
        self.stub.flush()
        self.successResultOf(stopped)
        self.updates.stopService()
        self.assertEqual(seen[-1], "held one ended")
        self.start()
        self.run_for(61)
        self.assertEqual(seen[seen.index("held one ended") + 1:][:4], [
            "POST /deploymentBase/24/feedback downloaded", "POST /deploymentBase/24/feedback proceeding",
            "POST /deploymentBase/24/feedback proceeding", "POST /deploymentBase/24/feedback closed"])
        self.assertEqual(self.server.executions(), [
            ("proceeding", "none"), ("download", "none"), ("downloaded", "none"), ("proceeding", "none"),
            ("proceeding", "none"), ("closed", "success")])
        self.assertEqual([e for e in events if e.get("log_level").name in ("warn", "error", "critical")], [])
        self.stop()

    def test_a_stop_during_a_polls_state_write_waits_for_it_and_logs_no_failure(self) -> None:
        """A stop that lands while a poll waits for its state write (a thread: here the write of
        the configData sent) ends only once the file is written, sends no request after it, and
        logs no failure. It ended at once, the write still running beside the next service's
        (a configuration change), and logged ``fleet poll failed`` with a CancelledError."""
        events = capture_log_events(self)
        disk = HeldThreads()
        fleet = self.start(disk=disk)
        self.run_for(10)
        self.assertEqual((len(self.server.config), len(disk.calls)), (1, 1))  # configData sent, its write held
        polls = fleet.snapshot().polls
        stopped = fleet.stopService()
        self.stub.flush()
        self.assertNoResult(stopped)
        disk.release_all()
        self.stub.flush()
        self.successResultOf(stopped)
        self.successResultOf(self.updates.stopService())
        self.assertEqual(FleetState.load(self.state / "fleet" / "state.json").config_hash, fleet.state.config_hash)
        self.assertEqual((fleet.snapshot().polls, len(self.server.config), self.clock.getDelayedCalls()), (polls, 1, []))
        self.assertEqual([formatEvent(e) for e in events if e.get("log_level").name in ("warn", "error", "critical")],
                         [])

    def test_a_state_write_that_fails_after_the_stop_gave_up_its_poll_is_logged(self) -> None:
        """A poll's state write that fails (a full disk) once the stop has given up the poll that
        waited for it is still logged: nobody else is left to say the saved state is older (the
        stop's cancel swallowed the write's error)."""
        events = capture_log_events(self)
        disk = HeldThreads()
        fleet = self.start(disk=disk)
        self.run_for(10)
        self.assertEqual(len(disk.calls), 1)  # the configData's state write, held

        def full(*args: Any) -> None:
            raise OSError(28, "No space left on device")

        held, _, args = disk.calls[0]
        disk.calls[0] = (held, full, args)
        stopped = fleet.stopService()
        disk.release_all()
        self.stub.flush()
        self.successResultOf(stopped)
        self.successResultOf(self.updates.stopService())
        self.assertEqual([formatEvent(e) for e in events if e.get("log_level").name in ("warn", "error", "critical")],
                         ["fleet state write failed as the service stopped: the saved state is the one before"])
        self.flushLoggedErrors(OSError)

    def test_feedback_answered_with_a_redirect_is_kept(self) -> None:
        """Feedback leaves the outbox only when the server accepted it (2xx) or refused it for good
        (a 4xx other than 401, 403, 408, 429): one answered 307 (a proxy's redirect; DDI requests
        follow none) is sent again, in order (it was dropped): a base_url put right delivers it.
        Its error says where the redirect pointed and what to do (it said ``HTTP 307: Temporary
        Redirect`` only, as a 5xx is told)."""
        self.server.deployment = deployment("16", FILES)
        self.server.feedback_errors = [(307, {"Location": "https://other.example/ddi?token=SECRET"})]
        events = capture_log_events(self)
        self.start()
        self.run_for(69)
        [line] = [formatEvent(e) for e in events if "not accepted, kept for later" in e.get("log_format", "")]
        self.assertRegex(line, r"feedback: HTTP 307: Temporary Redirect \(redirected to 'https://other.example/ddi': "
                               r"requests are not redirected; set fleet.base_url to the server's address\)$")
        self.assertEqual(self.server.executions(), [
            ("proceeding", "none"), ("download", "none"), ("downloaded", "none"), ("proceeding", "none"),
            ("proceeding", "none"), ("closed", "success")])

    def test_feedback_over_a_quota_is_dropped_and_shown(self) -> None:
        """hawkBit answers 403 (429 in later versions) with errorCode
        ``hawkbit.server.error.quota.tooManyEntries`` to a feedback over one of its quotas (an
        action's status entries, a status's messages): sending it again exceeds it again. It is
        dropped as a 4xx refused for good is, logged and shown as ``last_error``, and the steps
        after it go on; it was taken for a token problem and sent again for ever, holding up
        every feedback behind it. A 403 that says no quota (a token) is still sent again."""
        quota = json.dumps({"exceptionClass": "org.eclipse.hawkbit.repository.exception.AssignmentQuotaExceededException",
                            "errorCode": "hawkbit.server.error.quota.tooManyEntries",
                            "message": "Quota exceeded: Cannot assign 1 more ActionStatus entities to Action '32'. "
                                       "The maximum is 1000."}).encode()
        last_error = self.assert_first_feedback_dropped("32", (403, {"Content-Type": "application/json"}, quota))
        self.assertRegex(last_error, r"^POST https://ddi.example/.*/deploymentBase/32/feedback: HTTP 403: "
                                     r".*hawkbit.server.error.quota.tooManyEntries")
        for code, error_code in ((403, "hawkbit.server.error.quota.tooManyEntries"), (429, "hawkbit.server.error.quota.x"),
                                 (422, None)):
            self.assertTrue(refused_for_good(DDIError("", code, error_code=error_code)), code)
        for code, error_code in ((403, None), (403, "hawkbit.server.error.insufficientpermission"), (429, None),
                                 (401, "hawkbit.server.error.quota.x"), (503, "hawkbit.server.error.quota.x")):
            self.assertFalse(refused_for_good(DDIError("", code, error_code=error_code)), code)

    def test_feedback_taken_with_an_answer_that_is_not_json_is_not_sent_again(self) -> None:
        """A 2xx takes feedback out of the outbox even when its body is not JSON."""
        render = self.server.render

        def render_text(request: Any) -> Any:
            body = render(request)
            return b"OK" if request.method == b"POST" and body == b"" else body

        self.server.render = render_text  # type: ignore[method-assign]
        self.server.deployment = deployment("17", FILES)
        self.start()
        self.run_for(69)
        self.assertEqual(len(self.server.feedback), 6)
        self.assertEqual(FleetState.load(self.state / "fleet" / "state.json").outbox, [])

    def test_step_persisted_but_not_reported_before_a_crash_is_reported(self) -> None:
        """An operation step the update service persisted while the fleet state did not record it
        (a crash between the two) is reported at the next start; the server's re-offer does not
        install again, and a lost final feedback is sent again once."""
        self.server.deployment = deployment("15", FILES)
        self.start()
        self.run_for(8)
        self.stop()
        self.server.feedback = []
        (self.state / "fleet" / "state.json").unlink()  # as if nothing was ever reported
        self.start()
        self.run_for(8)
        self.assertEqual(self.server.executions(), [("closed", "success")])
        self.assertEqual(self.installer.archives, [ARCHIVE])


class DDIClientTests(SynchronousTestCase):
    """gateway.fleet.ddi.DDIClient against a server answering what no DDI server should."""

    def test_retry_after_as_seconds_or_an_http_date(self) -> None:
        """A 429 or 503's Retry-After counts as seconds or as an HTTP date (from the clock's now),
        at most a day; a date was ignored, so the gateway polled again after its own backoff, and
        a number too large for a float failed the poll with an OverflowError's traceback."""
        from twisted.web import http

        clock = Clock()
        clock.advance(1_700_000_000)
        for header, wait in ((b"120", 120.0), (http.datetimeToString(1_700_000_000 + 900), 900.0),
                             (b"soon", None), (b"9" * 400, 86400.0)):
            server = DDIServer()
            server.errors = [(503, {"Retry-After": header.decode()})]
            client = DDIClient(StubTreq(server), clock, SETTINGS.base_url, SETTINGS.tenant, "gw", None)
            failure = self.failureResultOf(client.poll(), DDIError)
            self.assertEqual((failure.value.code, failure.value.retry_after), (503, wait))

    def test_an_html_error_page_is_told_on_one_line(self) -> None:
        """A local server answering its HTML 501 page (a URL that is no DDI server's): the error
        (the fleet's ``last_error``, its log line) says ``HTTP 501: Method Not Implemented``
        (the page's title) on one line; the page's first 300 characters went into it, line breaks
        and markup included."""
        class Refusing(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                request.setResponseCode(501)
                return TWISTED_501

        client = DDIClient(StubTreq(Refusing()), Clock(), "http://ddi.test", "default", "gw", None)
        failure = self.failureResultOf(client.poll(), DDIError)
        self.assertEqual((failure.getErrorMessage(), failure.value.code), (
            "GET http://ddi.test/default/controller/v1/gw: HTTP 501: Method Not Implemented", 501))

    def test_a_request_without_an_answer_fails_after_request_timeout(self) -> None:
        """A server that takes the request and never answers fails it after request_timeout
        (the poll then backs off), saying so; nothing is left waiting."""
        class Stalled(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> int:
                return NOT_DONE_YET

        clock = Clock()
        client = DDIClient(StubTreq(Stalled()), clock, "http://ddi.test", "default", "gw", None, timeout=7)
        d = client.poll()
        clock.advance(6.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, DDIError)
        self.assertEqual(failure.getErrorMessage(),
                         "GET http://ddi.test/default/controller/v1/gw: no answer within 7 s (timed out)")
        self.assertEqual((failure.value.code, clock.getDelayedCalls()), (None, []))

    def test_a_request_waits_for_the_one_before_and_times_out_from_its_own_start(self) -> None:
        """A request asked while another is unanswered reaches the server only once that one has
        ended (here failed by its timeout), and its own request_timeout runs from then: the wait
        does not eat it. One given up while it waits (the service stopping) never goes out."""
        seen: list[str] = []

        class Stalled(Resource):
            isLeaf = True

            def render(self, request: Any) -> int:
                seen.append(request.method.decode())
                return NOT_DONE_YET

        clock = Clock()
        client = DDIClient(StubTreq(Stalled()), clock, "http://ddi.test", "default", "gw", None, timeout=7)
        first, second, third = client.poll(), client.put_config_data({"a": "1"}), client.poll()
        self.assertEqual(seen, ["GET"])
        third.cancel()
        self.failureResultOf(third)
        clock.advance(7)
        self.failureResultOf(first, DDIError)
        self.assertEqual(seen, ["GET", "PUT"])
        clock.advance(6.9)
        self.assertNoResult(second)
        clock.advance(0.1)
        self.assertIn("no answer within 7 s", self.failureResultOf(second, DDIError).getErrorMessage())
        self.assertEqual((seen, clock.getDelayedCalls()), (["GET", "PUT"], []))

    def test_close_gives_up_every_request_and_fires_once_none_is_under_way(self) -> None:
        """close() (the service stopping) cancels the request under way, its connection closed,
        and those waiting for their turn, which are never sent; each fails with DDIError and
        close fires at once, no timer left."""
        seen: list[str] = []
        ended: list[str] = []

        class Stalled(Resource):
            isLeaf = True

            def render(self, request: Any) -> int:
                seen.append(request.method.decode())
                request.notifyFinish().addErrback(lambda _: ended.append(request.method.decode()))
                return NOT_DONE_YET

        clock = Clock()
        stub = StubTreq(Stalled())
        client = DDIClient(stub, clock, "http://ddi.test", "default", "gw", None, timeout=7)
        first, second = client.feedback("deploymentBase", "5", {"execution": "proceeding"}), client.poll()
        self.assertEqual(seen, ["POST"])
        self.successResultOf(client.close())
        stub.flush()
        self.assertIn("no answer", self.failureResultOf(first, DDIError).getErrorMessage())
        self.assertEqual(self.failureResultOf(second, DDIError).getErrorMessage(),
                         "GET http://ddi.test/default/controller/v1/gw: given up before it was sent")
        self.assertEqual((seen, ended, clock.getDelayedCalls()), (["POST"], ["POST"], []))

    def test_close_closes_the_connections_kept_alive(self) -> None:
        """close() closes the connections its client keeps alive to the server once no request
        is under way: a stopped fleet service (a configuration change replaces it) left one open
        until the server dropped it."""
        closed: list[str] = []

        class Pool:
            def closeCachedConnections(self) -> Deferred[None]:
                closed.append("closed")
                return succeed(None)

        stub = StubTreq(Resource())
        stub.connection_pool = Pool()  # type: ignore[attr-defined]
        client = DDIClient(stub, Clock(), "http://ddi.test", "default", "gw", None)
        self.successResultOf(client.close())
        self.assertEqual(closed, ["closed"])

    def test_an_answer_whose_body_stalls_fails_after_request_timeout(self) -> None:
        """A server that sends an answer's headers and then trickles or stops its body fails the
        request after request_timeout, as one that never answers does, and its connection is
        closed. The timeout ended with the headers: such a body held the poll (and every poll
        after it) for ever."""
        lost: list[Any] = []

        class Trickling(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> int:
                request.setHeader(b"content-length", b"1000")
                request.write(b'{"config": ')
                request.notifyFinish().addErrback(lost.append)
                return NOT_DONE_YET

        clock = Clock()
        http = StubTreq(Trickling())
        client = DDIClient(http, clock, "http://ddi.test", "default", "gw", None, timeout=7)
        d = client.poll()
        http.flush()
        clock.advance(6.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        http.flush()
        failure = self.failureResultOf(d, DDIError)
        self.assertEqual(failure.getErrorMessage(),
                         "GET http://ddi.test/default/controller/v1/gw: no answer within 7 s (timed out)")
        self.assertEqual((len(lost), clock.getDelayedCalls()), (1, []))

    def test_an_answer_over_4_mib_fails_the_request(self) -> None:
        """A DDI answer is not read past 4 MiB (hawkBit's are kilobytes; an endless answer filled
        the gateway's memory): a GET fails saying so, with the answer's status; a PUT or POST
        answered 2xx is taken, its body unread."""
        class Huge(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                return b" " * (4 * 2**20 + 1)

        client = DDIClient(StubTreq(Huge()), Clock(), "http://ddi.test", "default", "gw", None)
        failure = self.failureResultOf(client.poll(), DDIError)
        self.assertEqual((failure.getErrorMessage(), failure.value.code), (
            "GET http://ddi.test/default/controller/v1/gw: HTTP 200, the answer is over 4194304 bytes", 200))
        self.assertIsNone(self.successResultOf(client.put_config_data({"a": "1"})))
        self.assertIsNone(self.successResultOf(client.feedback("deploymentBase", "1", {})))

    def test_an_answer_nested_too_deeply_is_not_json(self) -> None:
        """JSON nested deeper than Python's parser recurses is the DDIError 'the answer is not
        JSON' every other malformed answer is (the fleet service backs off and polls again);
        it raised RecursionError, which no caller expects."""
        class Deep(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return b"[" * 100000

        client = DDIClient(StubTreq(Deep()), Clock(), "http://ddi.test", "default", "gw", None)
        failure = self.failureResultOf(client.poll(), DDIError)
        self.assertIn("the answer is not JSON (JSON nested too deeply to parse)", failure.getErrorMessage())

    def test_an_answer_that_is_not_rfc_8259_json_is_not_json(self) -> None:
        """docs/fleet.md: an answer holding NaN, 1e400 or a key given twice (one of two action
        ids, taken silently) is the DDIError 'the answer is not JSON' of any malformed answer."""
        for body, why in ((b'{"config": {"polling": {"sleep": NaN}}}', "NaN is not JSON"),
                          (b'{"a": 1e400}', "the number 1e400 is too large"),
                          (b'{"id": "1", "id": "2"}', "key 'id' given twice in one object")):
            class Answer(Resource):
                isLeaf = True

                def render_GET(self, request: Any, body: bytes = body) -> bytes:
                    return body

            client = DDIClient(StubTreq(Answer()), Clock(), "http://ddi.test", "default", "gw", None)
            failure = self.failureResultOf(client.poll(), DDIError)
            self.assertIn(f"the answer is not JSON ({why}", failure.getErrorMessage())
