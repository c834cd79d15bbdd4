"""GatewayService.replace_children: the tree restarted with new services, in order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import ServiceStillStopping
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings
from gateway.exitdeadline import EXIT_GRACE
from gateway.root import STOP_LIMIT, GatewayService
from tests.journal.helpers import run_now
from tests.logevents import capture_log_events


class Recorded(Service):
    """Records its start and stop in a shared list; its start can wait or fail."""

    def __init__(self, name: str, events: list[str], fail: bool = False) -> None:
        self.setName(name)
        self.events = events
        self.fail = fail
        self.stopping: Deferred[None] | None = None

    def startService(self) -> None:
        self.events.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        self.events.append(f"stop {self.name}")
        self.stopping = Deferred()
        return self.stopping


class ReplaceChildrenTests(SynchronousTestCase):
    """Old children stop in reverse order (each waited for), new ones start in order; kept ones run on."""

    def setUp(self) -> None:
        self.events: list[str] = []
        self.root = GatewayService(Clock(), 4.0)
        self.kept = Recorded("state", self.events)
        self.kept.setServiceParent(self.root)
        for name in ("journal", "links"):
            Recorded(name, self.events).setServiceParent(self.root)
        self.root.startService()
        self.events.clear()

    def build(self, *names: str, failing: str = "") -> None:
        for name in names:
            Recorded(name, self.events, fail=name == failing).setServiceParent(self.root)

    def finish_stops(self) -> None:
        for child in list(self.root):
            if isinstance(child, Recorded) and child.stopping is not None and not child.stopping.called:
                child.stopping.callback(None)

    def test_stop_in_reverse_then_start_in_order(self) -> None:
        """Each old child stops only after the one after it has; the new ones start in order."""
        old_links = self.root.getServiceNamed("links")
        d = self.root.replace_children([self.kept], lambda: self.build("journal", "links"))
        self.assertEqual(self.events, ["stop links"])  # journal waits for links to be stopped
        old_links.stopping.callback(None)
        self.root.namedServices["journal"].stopping.callback(None)
        self.assertEqual(self.successResultOf(d), ("journal", "links"))
        self.assertEqual(self.events, ["stop links", "stop journal", "start journal", "start links"])
        self.assertIsNot(self.root.getServiceNamed("links"), old_links)
        self.assertTrue(self.kept.running)
        self.assertEqual([c.name for c in self.root], ["state", "journal", "links"])

    def test_start_failure_stops_the_new_ones_and_fails(self) -> None:
        """A new child that cannot start: those started before it are stopped, the Deferred fails."""
        old = [c for c in self.root if c is not self.kept]
        d = self.root.replace_children([self.kept], lambda: self.build("journal", "links", failing="links"))
        for child in reversed(old):
            child.stopping.callback(None)
        self.finish_stops()
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.events[-2:], ["start links", "stop journal"])
        self.assertTrue(self.kept.running)


class Overdue(Recorded):
    """A child whose stop must not outlive the timeout (as the apps service's programs)."""

    def stop_overdue(self) -> None:
        self.events.append(f"overdue {self.name}")


class OverdueStopTests(SynchronousTestCase):
    """A child whose stop outlasts shutdown_timeout is told so (OverdueStop), once."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[str] = []
        self.root = GatewayService(self.clock, 4.0)
        self.apps = Overdue("apps", self.events)
        self.apps.setServiceParent(self.root)
        self.root.startService()
        self.events.clear()

    def test_stop_past_the_timeout(self) -> None:
        """The apps' stop has taken shutdown_timeout: stop_overdue is called and the root goes
        on; the hosted programs outlived the gateway, SIGKILL coming only after their
        stopwaitsecs, which the process never reached."""
        d = self.root.stopService()
        self.clock.advance(3.9)
        self.assertEqual(self.events, ["stop apps"])
        self.clock.advance(0.1)
        self.assertEqual(self.events, ["stop apps", "overdue apps"])
        self.successResultOf(d)

    def test_the_stop_line_says_how_long_it_took(self) -> None:
        """The last line of the stop says it completed and how long it took (an apps' stop
        that took 2.5 s here); before, it did not say how long."""
        events = capture_log_events(self)
        d = self.root.stopService()
        self.clock.advance(2.5)
        self.apps.stopping.callback(None)
        self.successResultOf(d)
        self.assertEqual([formatEvent(e) for e in events], ["gateway shutdown completed in 2.5 s"])

    def test_the_start_line_says_what_runs(self) -> None:
        """The start line names the gateway's version and configuration file (``about``, set
        by build_service) before its services, and still begins with "gateway started"."""
        root = GatewayService(Clock(), 4.0)
        root.about = "version 0.1.0, config /etc/gateway/gateway.yaml"
        Overdue("apps", []).setServiceParent(root)
        events = capture_log_events(self)
        root.startService()
        self.assertEqual([formatEvent(e) for e in events],
                         ["gateway started (version 0.1.0, config /etc/gateway/gateway.yaml): apps"])

    def test_stop_in_time(self) -> None:
        """A stop within the timeout is not overdue."""
        d = self.root.stopService()
        self.apps.stopping.callback(None)
        self.clock.advance(10)
        self.successResultOf(d)
        self.assertEqual(self.events, ["stop apps"])


class HeldCloseRunner:
    """The journal's I/O thread, run at once, except that closing the files waits for the
    test: it fires a Deferred of :attr:`closes` when they are closed."""

    def __init__(self) -> None:
        self.closes: list[Deferred[Any]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if getattr(f, "__name__", "") != "close_all":
            return run_now(f, *args)
        held: Deferred[Any] = Deferred()
        self.closes.append(held)
        return held.addCallback(lambda _: f(*args))


class ExclusiveChildTests(SynchronousTestCase):
    """A journal still closing past the timeout is never replaced while it closes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[str] = []
        self.root = GatewayService(self.clock, 4.0)
        self.runner = HeldCloseRunner()
        self.journals: list[JournalService] = []
        self.new_journal()
        Recorded("links", self.events).setServiceParent(self.root)
        self.root.startService()

    def new_journal(self) -> None:
        journal = JournalService(JournalSettings(), Path(self.mktemp()), self.clock, run=self.runner)
        journal.setServiceParent(self.root)
        self.journals.append(journal)

    def test_no_new_journal_while_the_old_one_closes(self) -> None:
        """The old journal's close outlasts ``shutdown_timeout``: the restart fails and builds
        nothing; a later restart (the revert) waits for the close, then starts a new one."""
        d = self.root.replace_children((), self.new_journal, exclusive=("journal",))
        self.root.getServiceNamed("links").stopping.callback(None)
        self.clock.advance(4.0)
        failure = self.failureResultOf(d, ServiceStillStopping)
        self.assertIn("the journal did not stop within 4 s", str(failure.value))
        self.assertEqual(len(self.journals), 1, "no second journal was built")
        again = self.root.replace_children((), self.new_journal, exclusive=("journal",))
        self.assertNoResult(again)
        self.runner.closes[0].callback(None)  # the files are closed: now the new one may open them
        self.assertEqual(len(self.journals), 2)
        self.assertEqual(self.successResultOf(again), ("journal",))
        self.assertTrue(self.journals[1].running)

    def test_a_slow_stop_of_another_child_does_not_hold_the_restart(self) -> None:
        """Only the children named exclusive are waited for past the timeout."""
        d = self.root.replace_children((), lambda: None, exclusive=("journal",))
        self.clock.advance(4.0)  # links never stops
        self.runner.closes[0].callback(None)
        self.assertEqual(self.successResultOf(d), ())


class StopLimitTests(SynchronousTestCase):
    """The whole stop ends within STOP_LIMIT, below the packaged unit's TimeoutStopSec, whatever
    ``shutdown_timeout`` adds up to over the children (up to 60 s each)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[str] = []

    def tree(self, root: GatewayService) -> GatewayService:
        for name in ("journal", "broker", "apps", "admin"):
            (Overdue if name == "apps" else Recorded)(name, self.events).setServiceParent(root)
        root.startService()
        self.events.clear()
        return root

    def test_stop_ends_at_the_limit(self) -> None:
        """Four children that never finish stopping, each allowed 60 s: the stop ends at
        STOP_LIMIT (it waited 4 x 60 s, past TimeoutStopSec, so systemd killed the gateway
        before it had stopped its programs). Every child is told to stop all the same, in
        reverse order, and the apps that they are overdue."""
        root = self.tree(GatewayService(self.clock, 60.0))
        d = root.stopService()
        self.clock.advance(STOP_LIMIT - 0.1)
        self.assertNoResult(d)
        self.assertEqual(self.events, ["stop admin", "stop apps"])
        self.clock.advance(0.1)  # (the children left get no time: their waits end at once)
        self.successResultOf(d)
        self.assertEqual(self.events, ["stop admin", "stop apps", "overdue apps", "stop broker", "stop journal"])

    def test_wait_for_a_configuration_change_counts(self) -> None:
        """A configuration change that never ends: the stop waits for it only until the limit,
        then stops every child without waiting (it waited for the change for ever)."""
        from gateway.tree import GatewayTree

        class Changing:
            def close(self) -> None:
                pass

            def when_idle(self) -> Deferred[None]:
                return Deferred()

        root = GatewayTree(self.clock, 4.0)
        root.changer = Changing()  # type: ignore[assignment]
        self.tree(root)
        d = root.stopService()
        self.clock.advance(STOP_LIMIT - 0.1)
        self.assertNoResult(d)
        self.assertEqual(self.events, [])
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(self.events, ["stop admin", "stop apps", "overdue apps", "stop broker", "stop journal"])

    def test_exit_deadline_bounds_what_follows_the_stop(self) -> None:
        """The process's exit deadline is armed for STOP_LIMIT and EXIT_GRACE when the stop
        begins, and for EXIT_GRACE once the tree has stopped: the reactor's thread-pool join
        after the stop (a pool thread stuck in a blocking call) cannot hold the process past
        the unit's TimeoutStopSec."""
        armed: list[float] = []

        class Deadline:
            def arm(self, seconds: float) -> None:
                armed.append(seconds)

        root = self.tree(GatewayService(self.clock, 60.0, exit_deadline=Deadline()))  # type: ignore[arg-type]
        d = root.stopService()
        self.assertEqual(armed, [STOP_LIMIT + EXIT_GRACE])
        self.clock.advance(STOP_LIMIT)
        self.successResultOf(d)
        self.assertEqual(armed, [STOP_LIMIT + EXIT_GRACE, EXIT_GRACE])

    def test_unit_waits_longer_than_the_limit(self) -> None:
        """The packaged unit's TimeoutStopSec leaves the gateway its STOP_LIMIT, the EXIT_GRACE
        its exit may take after it, and 5 s more before systemd sends SIGKILL."""
        unit = (Path(__file__).parent.parent / "debian" / "gateway.service").read_text()
        [value] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
        self.assertGreaterEqual(float(value), STOP_LIMIT + EXIT_GRACE + 5)


class UnusableStateTests(SynchronousTestCase):
    """A service that cannot use a file or directory of the state at start (OSError): the
    gateway's one line names the service, the path, and what to do."""

    def test_the_line_names_the_service_the_path_and_what_to_do(self) -> None:
        """'gateway failed to start: [Errno 20] Not a directory: '/s/apps/sleeper/data'' was all
        the gateway said for a file where the apps' directory belongs (the service unnamed,
        nothing said of what to do); each such refusal now says whose it is and what to do,
        and an error that is no such refusal is told as before."""
        import errno
        import pwd

        from twisted.logger import LogLevel, formatEvent

        from tests.logevents import capture_log_events

        for number, says in (
                (errno.ENOTDIR, "apps: /s/apps/sleeper/data: Not a directory (a file is where a directory belongs:"
                                " move it away)"),
                (errno.EEXIST, "apps: /s/apps/sleeper/data: File exists (a file is where a directory belongs:"
                               " move it away)"),
                (errno.EACCES, "apps: /s/apps/sleeper/data may not be used by the gateway's user"
                               f" {pwd.getpwuid(os.geteuid()).pw_name}: give it to that user and start again"),
                (errno.ENOSPC, "apps: /s/apps/sleeper/data: No space left on device (free some space on its disk)"),
                (errno.EIO, "apps: /s/apps/sleeper/data: Input/output error")):
            events = capture_log_events(self)
            root = GatewayService(Clock(), 4.0)
            state = Service()
            state.setName("state")
            state.setServiceParent(root)
            failing = Recorded("apps", [])
            failing.startService = lambda: (_ for _ in ()).throw(  # type: ignore[method-assign]
                OSError(number, os.strerror(number), "/s/apps/sleeper/data"))
            failing.setServiceParent(root)
            root.startService()
            self.failureResultOf(root.started)
            self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.critical],
                             [f"gateway failed to start: {says}"])
        events = capture_log_events(self)
        root = GatewayService(Clock(), 4.0)
        Recorded("apps", [], fail=True).setServiceParent(root)
        root.startService()
        self.failureResultOf(root.started, RuntimeError)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.critical],
                         ["gateway failed to start: apps cannot start"])

    def test_a_permission_problem_names_the_owner_the_mode_and_the_chown(self) -> None:
        """A service refused a directory of the state (EACCES: root's, after ``sudo twistd
        gateway``): the line names its owner and mode and the command that gives the state
        directory back; it said only to 'give it to that user'."""
        import errno

        from twisted.logger import LogLevel

        from gateway.statelock import LOCK_FILE
        from tests.test_stateaccess import GATEWAY_UID, name_of

        state = Path(self.mktemp()).absolute()
        run = state / "run"
        run.mkdir(parents=True)
        (state / LOCK_FILE).write_text("")
        os.chmod(run, 0o750)
        owner, user = name_of(os.stat(run).st_uid), name_of(GATEWAY_UID)
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        events = capture_log_events(self)
        root = GatewayService(Clock(), 4.0)
        failing = Recorded("admin", [])
        failing.startService = lambda: (_ for _ in ()).throw(  # type: ignore[method-assign]
            PermissionError(errno.EACCES, "Permission denied", str(run)))
        failing.setServiceParent(root)
        root.startService()
        self.failureResultOf(root.started)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.critical],
                         [f"gateway failed to start: admin: {run} (owner {owner}, mode 0750) may not be used by the"
                          f" gateway's user {user}: chown -R {user}: {state} and start again"])
