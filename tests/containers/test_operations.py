"""Container apps' supervision and operations against an in-memory runtime (deterministic)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.errors import DesiredStateError, UnknownAppError
from gateway.apps.logs import AppLogWriter
from gateway.apps.process import ProgramState
from gateway.containers.description import ContainerDescription, RestartPolicy
from gateway.containers.errors import RuntimeFailure, RuntimeUnavailable
from gateway.containers.images import ImageFetcher
from gateway.containers.operations import LABEL_APP, LABEL_OWNER, LABEL_VERSION, ContainerOperations
from gateway.containers.runtime import ContainerState, ContainerRuntime, ImageInfo
from gateway.containers.store import ContainerStore, Deployed, DesiredState
from gateway.containers.supervisor import UNREACHABLE, ContainerSupervisor
from gateway.degraded import Degraded
from tests.containers.conformance import missing
from tests.containers.fakes import FakeRuntime
from tests.steppingclock import SteppingClock
from tests.heldthreads import HeldThreads


def inline(work: Any) -> Any:
    return succeed(work())


class OperationsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.state.mkdir()
        self.clock = Clock()
        self.runtime = FakeRuntime()
        for tag in ("1", "2"):
            self.runtime.registry[f"reg:5000/app:{tag}"] = ImageInfo(f"img{tag}", f"sha256:d{tag}",
                                                                     (f"reg:5000/app:{tag}",))
        self.writer = AppLogWriter(10 * 2**20)

    def refuse_saves(self, error: int, failing: Callable[[int], bool] = lambda n: True) -> tuple[list[DesiredState], Any]:
        """Make ``ContainerStore.save`` raise ``OSError(error)`` for the saves ``failing(n)``
        picks (``n`` counts them from 1; the others are written); return the states asked to
        be saved and the patch (``restore()`` it to write them all again)."""
        save = ContainerStore.save
        saves: list[DesiredState] = []

        def refusing(store: ContainerStore, state: DesiredState) -> None:
            saves.append(state)
            if failing(len(saves)):
                raise OSError(error, os.strerror(error))
            save(store, state)
        return saves, self.patch(ContainerStore, "save", refusing)

    def update_refusing_saves(self, failing: Callable[[int], bool]) -> tuple[ContainerOperations, list[DesiredState],
                                                                                Any, Any]:
        """Install app 1 (healthy), then refuse the saves ``failing`` picks (ENOSPC, as
        :meth:`refuse_saves`) and install app 2: the operations, the states asked to be saved,
        the patch and the update's Deferred."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        saves, patch = self.refuse_saves(errno.ENOSPC, failing)
        return operations, saves, patch, operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))

    def make(self, declared: dict[str, ContainerDescription] | None = None,
             insecure: tuple[str, ...] = ("reg:5000",), startretries: int = 2) -> ContainerOperations:
        self.supervisor = ContainerSupervisor(self.runtime, self.clock, self.writer, self.state / "logs",
                                              1.0, 8.0, startretries, retry=lambda attempt: 5.0)
        fetcher = ImageFetcher(self.runtime, inline, insecure, None)
        operations = ContainerOperations(self.runtime, self.supervisor, fetcher, ContainerStore(self.state),
                                         self.clock, inline, 3.0, declared or {})
        self.successResultOf(operations.load())
        return operations

    def unit(self, name: str = "app") -> Any:
        return self.supervisor.units[name]

    def test_fake_provides_the_interface(self) -> None:
        """The fake runtime is checked against the interface the podman runtime implements."""
        self.assertEqual(missing(self.runtime, ContainerRuntime), [])

    def test_declared_container_runs_and_restarts_with_backoff(self) -> None:
        """A declared container is pulled (plain HTTP only for an insecure registry), created and
        started; when it dies quickly it is restarted after the hosted processes' doubling delay."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=1)})
        self.assertIn(("pull", "reg:5000/app:1", "False"), self.runtime.calls)
        self.clock.advance(1)
        self.assertIs(self.unit().state, ProgramState.RUNNING)
        cid = self.unit().container_id
        self.runtime.exit(cid, 1)
        self.assertIs(self.unit().state, ProgramState.EXITED)
        self.clock.advance(0.99)
        self.assertFalse(self.runtime.containers_by_id[cid].running)
        self.clock.advance(0.01)
        self.clock.advance(1)
        self.assertIs(self.unit().state, ProgramState.RUNNING)
        self.runtime.exit(cid, 1)
        self.clock.advance(1.99)
        self.assertIs(self.unit().state, ProgramState.EXITED)
        self.clock.advance(0.01)
        self.assertEqual((self.unit().state, self.unit().restarts), (ProgramState.STARTING, 2))

    def forgotten_as_it_ends(self, how: str) -> None:
        """A running unit that an observer of its state forgets as it ends (``how``: ``exited``,
        or ``start failed`` after a stop): no restart is scheduled, no start reaches the runtime."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=1)})
        self.clock.advance(1)
        unit = self.unit()
        self.assertIs(unit.state, ProgramState.RUNNING)
        forgetting = ProgramState.EXITED if how == "exited" else ProgramState.BACKOFF
        self.supervisor.observers.append(
            lambda which: self.supervisor.forget(which.name) if which.state is forgetting else None)
        if how == "start failed":
            unit.stop()
            self.runtime.refuse_start = "no"
            unit.start()
        else:
            self.runtime.exit(unit.container_id, 1)
        self.assertIs(unit.state, forgetting)
        self.assertNotIn("app", self.supervisor.units)
        starts = self.runtime.calls.count(("start", unit.container_id))
        self.clock.advance(60)
        self.assertEqual((self.runtime.calls.count(("start", unit.container_id)), unit.restarts), (starts, 0))

    def test_a_unit_forgotten_as_it_exits_schedules_no_restart(self) -> None:
        """A unit that an observer of its state (the health watch of an install, rolling it
        back) forgets as it exits is restarted no more. The restart was scheduled after the
        observers were told, on a unit already closed."""
        self.forgotten_as_it_ends("exited")

    def test_a_unit_forgotten_as_its_start_fails_schedules_no_restart(self) -> None:
        """The same for a start that failed (BACKOFF): no start again."""
        self.forgotten_as_it_ends("start failed")

    def test_a_unit_stopped_as_it_ends_schedules_no_restart(self) -> None:
        """A unit that an observer of its state stops as it exits, or as its start fails (the
        health watch of an install does, to read its logs for the rollback's report, before it
        forgets it), stays STOPPED: its restart was scheduled all the same, after the observers
        were told, and started the container again as it was rolled back, as hosted programs
        never do."""
        for ending in (ProgramState.EXITED, ProgramState.BACKOFF):
            self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=1)})
            self.clock.advance(1)
            unit = self.unit()
            self.supervisor.observers.append(
                lambda which, ending=ending: which.stop() if which.state is ending else None)
            if ending is ProgramState.BACKOFF:
                unit.stop()
                self.runtime.refuse_start = "no"
                unit.start()
            else:
                self.runtime.exit(unit.container_id, 1)
            self.assertIs(unit.state, ProgramState.STOPPED, ending)
            starts = self.runtime.calls.count(("start", unit.container_id))
            self.clock.advance(60)
            self.assertEqual((self.runtime.calls.count(("start", unit.container_id)), unit.state),
                             (starts, ProgramState.STOPPED), ending)
            self.supervisor.forget("app")
            self.runtime.refuse_start = None

    def test_a_start_that_failed_keeps_its_error_while_it_starts_again(self) -> None:
        """A container that dies before startsecs is BACKOFF with why, and keeps that error while
        it starts again, as a hosted program does (docs/apps.md); it is cleared once a start
        reaches RUNNING. It was cleared at each start: a crash loop showed an empty error."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=2)})
        self.runtime.exit(self.unit().container_id, 1)
        self.assertEqual((self.unit().state, self.unit().error), (ProgramState.BACKOFF, "exited with 1 before 2s"))
        self.clock.advance(1)
        self.assertEqual((self.unit().state, self.unit().status().error),
                         (ProgramState.STARTING, "exited with 1 before 2s"))
        self.clock.advance(2)
        self.assertEqual((self.unit().state, self.unit().error), (ProgramState.RUNNING, ""))

    def test_a_delegated_container_dying_before_startsecs_is_restarted_by_podman_alone(self) -> None:
        """With ``delegate: true`` a container that dies before startsecs waits in BACKOFF, with
        why, for podman's policy to start it again; the gateway does not start it as well (it
        did, after its own backoff: two restarts, counted twice). Under a policy that does not
        restart that end it is FATAL, not BACKOFF for ever."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=2,
                                               restart_policy=RestartPolicy(type="on-failure", delegate=True))})
        cid = self.unit().container_id
        starts = self.runtime.calls.count(("start", cid))
        self.runtime.exit(cid, 1)
        self.assertEqual((self.unit().state, self.unit().error), (ProgramState.BACKOFF, "exited with 1 before 2s"))
        self.clock.advance(0.1)
        self.runtime.start(cid)  # podman's restart policy
        self.assertEqual((self.unit().state, self.unit().error), (ProgramState.STARTING, "exited with 1 before 2s"))
        self.clock.advance(10)
        self.assertEqual(self.runtime.calls.count(("start", cid)), starts + 1)  # podman's alone
        self.assertEqual((self.unit().state, self.unit().error, self.unit().restarts), (ProgramState.RUNNING, "", 1))
        self.successResultOf(self.unit().stop())
        self.unit().start()
        self.runtime.exit(cid, 0)  # on-failure: podman leaves it
        self.assertEqual((self.unit().state, self.unit().error), (ProgramState.FATAL, "exited with 0 before 2s"))
        self.clock.advance(10)
        self.assertFalse(self.runtime.containers_by_id[cid].running)

    def test_a_crash_loop_is_logged_once_per_interval(self) -> None:
        """A container that keeps dying soon after its start (a crash loop, restarted by its policy
        for ever) wrote 'containers: app exited with 1 after 2.0s' at each restart, every
        backoff_max for ever; now its first end, then one line every 10 minutes saying how many
        ends it stands for, as for a hosted program. An end after a run of backoff_max or more is
        no crash loop, and the first end after an operator's start is news: logged at once."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=1)})
        with capturedLogs() as events:
            for _ in range(80):  # about 11 minutes: 1 s up, then dead for the 8 s delay cap
                self.clock.advance(1)
                self.runtime.exit(self.unit().container_id, 1)
                self.clock.advance(8)
            self.assertEqual(self.unit().state, ProgramState.STARTING)
            ends = [formatEvent(e) for e in events if "exited" in formatEvent(e)]
            self.assertEqual(ends, ["containers: app exited with 1 after 1.0s",
                                    "containers: app exited with 1 after 1.0s (67 times since the last such line:"
                                    " a crash loop, logged at most once every 10 minutes while it goes on)"])
            del events[:]
            self.clock.advance(9)  # a run long enough: its end is news
            self.runtime.exit(self.unit().container_id, 1)
            self.clock.advance(0)
            self.successResultOf(self.unit().stop())
            self.unit().start()  # an operator's start: its first end is news too
            self.clock.advance(1)
            self.runtime.exit(self.unit().container_id, 1)
            self.assertEqual([formatEvent(e) for e in events if "exited" in formatEvent(e)],
                             ["containers: app exited with 1 after 9.0s", "containers: app exited with 143 after 0.0s",
                              "containers: app exited with 1 after 1.0s"])

    def test_a_delegated_crash_loop_is_logged_once_per_interval(self) -> None:
        """With ``delegate: true`` a container that podman restarts after each quick end past
        startsecs is a crash loop too: its first end, then one line every 10 minutes with the
        count, whichever policy restarts it."""
        for policy in ("on-failure", "unless-stopped"):
            self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=1,
                                                   restart_policy=RestartPolicy(type=policy, delegate=True))})
            cid = self.unit().container_id
            with capturedLogs() as events:
                for _ in range(80):  # about 11 minutes: 2 s up, then 6 s until podman restarts it
                    self.clock.advance(2)
                    self.assertIs(self.unit().state, ProgramState.RUNNING)
                    self.runtime.exit(cid, 1)
                    self.clock.advance(6)
                    self.runtime.start(cid)  # podman's restart policy
            ends = [formatEvent(e) for e in events if "exited" in formatEvent(e)]
            self.assertEqual(ends, ["containers: app exited with 1 after 2.0s",
                                    "containers: app exited with 1 after 2.0s (75 times since the last such line:"
                                    " a crash loop, logged at most once every 10 minutes while it goes on)"], policy)
            self.supervisor.forget("app")

    def test_a_step_of_the_wall_clock_moves_neither_uptime_nor_backoff(self) -> None:
        """NTP steps the clock forward by 56 years while a container runs: its uptime is the
        time it ran, and a quick death after it is still a crash loop, restarted after the
        backoff (it counted as a long run: restarted at once, the backoff started over)."""
        self.clock = SteppingClock()
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=1)})
        self.clock.advance(1)
        self.assertIs(self.unit().state, ProgramState.RUNNING)
        self.clock.step(56 * 365 * 86400.0)
        self.clock.advance(2)
        self.assertEqual(self.unit().status().uptime, 3)
        self.runtime.exit(self.unit().container_id, 1)
        self.clock.advance(0.99)
        self.assertIs(self.unit().state, ProgramState.EXITED)
        self.clock.advance(0.01)
        self.assertIs(self.unit().state, ProgramState.STARTING)

    def test_uptime_is_whole_seconds(self) -> None:
        """A container's uptime is the whole seconds it has run, as a process app's (``GET /apps``'
        ``uptime_s``, docs/containers.md): it was fractional in the snapshot and the admin API."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=1)})
        self.clock.advance(3.4)
        uptime = self.unit().status().uptime
        self.assertEqual((uptime, type(uptime)), (3, int))

    def test_a_restart_records_and_logs_the_end_of_the_run_it_stopped(self) -> None:
        """docs/containers.md: an info line for each end, and ``exitstatus`` the last exit code.
        podman answers a stop before its event stream says the container died; a restart then
        starts it at once, and that ``died`` event, read after the new start, was dropped: the
        end was neither logged nor recorded (``exitstatus`` stayed null, seen on a real gateway
        after ``POST /apps/NAME/restart``)."""
        from tests.logevents import capture_log_events

        operations = self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0)})
        self.clock.advance(5)
        first = self.unit().pid
        events = capture_log_events(self)
        self.runtime.hold_events()
        self.successResultOf(operations.restart("app"))
        self.runtime.release_events()
        unit = self.unit()
        self.assertEqual((unit.state, unit.exitstatus, unit.restarts), (ProgramState.RUNNING, 143, 0))
        self.assertNotEqual(unit.pid, first)
        self.assertEqual([formatEvent(e) for e in events if "exited" in formatEvent(e)],
                         ["containers: app exited with 143 after 5.0s"])
        self.runtime.exit(unit.container_id, 3)  # (the new run's end is its own, as before)
        self.assertEqual((unit.state, unit.exitstatus), (ProgramState.EXITED, 3))

    def test_restart_policies(self) -> None:
        """``no`` never restarts, ``on-failure`` only after a non-zero exit and at most max_retries."""
        self.make({"never": ContainerDescription(image="reg:5000/app:1", startsecs=0,
                                                 restart_policy=RestartPolicy(type="no")),
                   "fail": ContainerDescription(image="reg:5000/app:1", startsecs=0,
                                                restart_policy=RestartPolicy(type="on-failure", max_retries=1))})
        self.runtime.exit(self.unit("never").container_id, 2)
        self.runtime.exit(self.unit("fail").container_id, 0)
        self.clock.advance(60)
        self.assertIs(self.unit("never").state, ProgramState.EXITED)
        self.assertIs(self.unit("fail").state, ProgramState.EXITED)
        self.successResultOf(self.supervisor.units["fail"].stop())
        self.unit("fail").start()
        self.runtime.exit(self.unit("fail").container_id, 3)
        self.clock.advance(1)
        self.assertIs(self.unit("fail").state, ProgramState.RUNNING)
        self.runtime.exit(self.unit("fail").container_id, 3)
        self.assertIs(self.unit("fail").state, ProgramState.FATAL)

    def test_a_death_without_an_exit_code_is_recorded_as_unknown(self) -> None:
        """docs/containers.md: a ``died`` event that carries no exit code leaves ``exitstatus``
        null (unknown), and ``on-failure`` restarts it (an unknown status is no success). It
        was recorded as -1, which the apps' convention (minus the signal number) reads as
        killed by signal 1."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0,
                                               restart_policy=RestartPolicy(type="on-failure", max_retries=3))})
        self.runtime.exit(self.unit().container_id, None)
        self.assertEqual((self.unit().state, self.unit().exitstatus), (ProgramState.EXITED, None))
        self.assertIsNone(self.unit().status().exitstatus)
        self.clock.advance(1)
        self.assertIs(self.unit().state, ProgramState.RUNNING)

    def test_fatal_after_max_retries_says_why(self) -> None:
        """A container its restart policy gives up on (``max_retries`` quick exits in a row) is
        FATAL with the reason in ``error``, as every FATAL container is (docs/containers.md:
        error, why it is FATAL or in BACKOFF; empty when nothing failed); it was FATAL with an
        empty error, the reason only in the log."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0,
                                               restart_policy=RestartPolicy(type="on-failure", max_retries=1))})
        self.runtime.exit(self.unit().container_id, 3)
        self.clock.advance(1)
        self.assertIs(self.unit().state, ProgramState.RUNNING)
        self.assertEqual(self.unit().status().error, "")
        self.runtime.exit(self.unit().container_id, 3)
        status = self.unit().status()
        self.assertIs(status.state, ProgramState.FATAL)
        self.assertIn("exited with 3", status.error)
        self.assertIn("max_retries", status.error)

    def test_max_retries_counts_quick_ends_in_a_row(self) -> None:
        """docs/containers.md: ``max_retries`` (the gateway's policy) counts the ends in a row
        that each came less than ``apps.backoff_max`` (8 s here) after their start: ends after
        longer runs are restarted however many they are; the second quick end in a row is
        ``FATAL`` with ``max_retries: 1``, saying so (it said 'exited with 3 2 times in a
        row', the exit code and the count side by side)."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0,
                                               restart_policy=RestartPolicy(type="on-failure", max_retries=1))})
        for _ in range(3):
            self.clock.advance(10)
            self.runtime.exit(self.unit().container_id, 3)
            self.clock.advance(0)
            self.assertIs(self.unit().state, ProgramState.RUNNING)
        self.runtime.exit(self.unit().container_id, 3)
        self.clock.advance(1)
        self.assertIs(self.unit().state, ProgramState.RUNNING)
        self.runtime.exit(self.unit().container_id, 3)
        status = self.unit().status()
        self.assertEqual((status.state, status.error),
                         (ProgramState.FATAL, "exited with 3: 2 ends in a row, each within 8s of its start"
                                             " (restart_policy.max_retries: 1)"))

    def test_refused_start_backs_off_then_fatal_with_the_reason(self) -> None:
        """A start the runtime refuses (a limit the kernel refuses) is retried, then FATAL with its error."""
        self.runtime.refuse_start = "OCI runtime error: memory limit too low"
        self.make({"app": ContainerDescription(image="reg:5000/app:1")})
        self.clock.pump([1.0] * 10)
        status = self.unit().status()
        self.assertEqual((status.state, status.error), (ProgramState.FATAL, "OCI runtime error: memory limit too low"))

    def test_startretries_counts_retries_after_the_first_failed_start(self) -> None:
        """``containers.startretries`` (2 here) is the failed retries before FATAL, as a hosted
        program's: the first start and 2 retries fail in BACKOFF, the third failure is FATAL."""
        self.runtime.refuse_start = "OCI runtime error: no such CPU"
        self.make({"app": ContainerDescription(image="reg:5000/app:1")})
        for failed in (1, 2):
            self.assertEqual((len([c for c in self.runtime.calls if c[0] == "start"]), self.unit().state),
                             (failed, ProgramState.BACKOFF))
            self.clock.advance(8.0)
        self.assertEqual(len([c for c in self.runtime.calls if c[0] == "start"]), 3)
        self.assertIs(self.unit().state, ProgramState.FATAL)
        self.clock.advance(60.0)
        self.assertEqual(len([c for c in self.runtime.calls if c[0] == "start"]), 3)

    def test_fatal_after_one_failed_start_says_one_time(self) -> None:
        """With ``containers.startretries`` 0 the first failed start is FATAL, logged as
        ``failed to start 1 time`` (it said ``1 times``)."""
        self.runtime.refuse_start = "OCI runtime error: no such CPU"
        with capturedLogs() as events:
            self.make({"app": ContainerDescription(image="reg:5000/app:1")}, startretries=0)
        self.assertIs(self.unit().state, ProgramState.FATAL)
        self.assertIn("containers: app failed to start 1 time: FATAL", [formatEvent(e) for e in events])

    def test_reconcile_removes_duplicates_and_adopts(self) -> None:
        """After a crash in the middle of an update, the runtime holds the current version's container
        (running: adopted, not restarted) and a stale one: the stale one is removed."""
        description = ContainerDescription(image="reg:5000/app:2")
        deployed = Deployed("app", "2", description, "img2", "sha256:d2")
        store = ContainerStore(self.state)
        store.save(DesiredState({"app": deployed}, {"img2"}))
        self.runtime.images["img2"] = self.runtime.registry["reg:5000/app:2"]
        self.runtime.containers_by_id["old"] = ContainerState("old", "app.0123", {LABEL_APP: "app"}, True, 5)
        self.runtime.containers_by_id["cur"] = ContainerState("cur", deployed.container_name, {LABEL_APP: "app"},
                                                              True, 6)
        self.runtime.containers_by_id["orphan"] = ContainerState("orphan", "gone.1", {LABEL_APP: "gone"}, False)
        self.make()
        self.assertEqual(sorted(self.runtime.containers_by_id), ["cur"])
        self.assertEqual((self.unit().container_id, self.unit().state), ("cur", ProgramState.RUNNING))
        self.assertNotIn(("start", "cur"), self.runtime.calls)

    def test_an_adopted_container_keeps_its_own_uptime(self) -> None:
        """After a gateway restart, a running container it adopts shows the uptime of its own
        run, from podman's ``State.StartedAt`` (nanoseconds, a local offset), not the time since
        the gateway adopted it (docs/containers.md): it started from zero. A StartedAt after
        now (the wall clock stepped back) or none counts from the adoption."""
        description = ContainerDescription(image="reg:5000/app:1")
        deployed = {name: Deployed(name, "1", description, "img1", "sha256:d1") for name in ("app", "ahead", "none")}
        ContainerStore(self.state).save(DesiredState(deployed, {"img1"}))
        self.runtime.images["img1"] = self.runtime.registry["reg:5000/app:1"]
        self.clock.advance(1_800_000_000.0)  # 2027-01-15T08:00:00Z
        started = {"app": "2027-01-15T08:59:40.987654321+02:00", "ahead": "2027-01-15T08:00:30Z", "none": ""}
        for name, at in started.items():
            self.runtime.containers_by_id[name] = ContainerState(name, deployed[name].container_name,
                                                                 {LABEL_APP: name}, True, 6, started_at=at)
        self.make()
        self.clock.advance(5)
        self.assertEqual({name: self.unit(name).status().uptime for name in started},
                         {"app": 3624, "ahead": 5, "none": 5})

    def test_another_gateways_containers_are_left_alone(self) -> None:
        """Two gateways on one machine (each its own state directory) with the same podman
        storage: this one's start, an update of an app and its uninstall leave the other
        one's containers as they are, of apps of the same names too (label
        io.gateway.state-dir); they were removed as strays ('removing app.0123, not a current
        version'). A container made before the label (none) is still this gateway's: removed
        as a stray. The containers this one makes name its state directory."""
        elsewhere = {LABEL_OWNER: "/var/lib/gateway-b"}
        self.runtime.containers_by_id["b-app"] = ContainerState("b-app", "app.b", {LABEL_APP: "app", **elsewhere},
                                                                True, 5)
        self.runtime.containers_by_id["b-solo"] = ContainerState("b-solo", "solo.b", {LABEL_APP: "solo", **elsewhere},
                                                                 True, 6)
        self.runtime.containers_by_id["unlabelled"] = ContainerState("unlabelled", "gone.1", {LABEL_APP: "gone"},
                                                                     False)
        operations = self.make()
        self.assertEqual(sorted(self.runtime.containers_by_id), ["b-app", "b-solo"])
        for version in ("1", "2"):
            done = operations.install("app", version, ContainerDescription(image=f"reg:5000/app:{version}",
                                                                           startsecs=0))
            self.clock.advance(3)
            self.assertTrue(self.successResultOf(done).ok)
        own = self.unit("app").container_id
        self.assertEqual(self.runtime.containers_by_id[own].labels,
                         {LABEL_APP: "app", LABEL_VERSION: "2", LABEL_OWNER: str(self.state.absolute())})
        self.assertEqual(sorted(self.runtime.containers_by_id), sorted(["b-app", "b-solo", own]))
        self.successResultOf(operations.uninstall("app"))
        self.assertEqual(sorted(self.runtime.containers_by_id), ["b-app", "b-solo"])
        self.assertEqual([c.running for c in self.runtime.containers_by_id.values()], [True, True])

    def test_images_an_update_cut_short_left_unused_are_deleted_at_the_start(self) -> None:
        """An update cut short after it made its version current (a SIGKILL before its end, step
        6) pruned nothing, and the update run again ends at once ('already current'): the next
        start deletes the images the gateway brought in that no current or previous version uses.
        The version before the previous one's image stayed on the disk until the next update."""
        store = ContainerStore(self.state)
        previous = Deployed("app", "1", ContainerDescription(image="reg:5000/app:1"), "img1", "sha256:d1")
        current = Deployed("app", "2", ContainerDescription(image="reg:5000/app:2"), "img2", "sha256:d2",
                           previous=previous)
        store.save(DesiredState({"app": current}, {"img0", "img1", "img2"}))
        for tag in ("0", "1", "2"):
            self.runtime.images[f"img{tag}"] = ImageInfo(f"img{tag}", f"sha256:d{tag}", (f"reg:5000/app:{tag}",))
        self.make()
        self.assertEqual(sorted(self.runtime.images), ["img1", "img2"])
        self.assertEqual(store.load()[0].images, {"img1", "img2"})
        self.assertEqual(self.unit().version, "2")

    def test_the_state_holding_the_containers_env_is_the_gateway_users_alone(self) -> None:
        """state.json holds each description, its env with it (a password): mode 0600 from
        its first byte, whatever the umask lets through (docs/containers.md); it was 0644
        under a umask of 022, for every local user to read."""
        store = ContainerStore(self.state)
        deployed = Deployed("app", "1", ContainerDescription(image="reg:5000/app:1", env={"DB_PASS": "SECRET-1"}),
                            "img1", "sha256:d1")
        before = os.umask(0o022)
        try:
            store.save(DesiredState({"app": deployed}, {"img1"}))
        finally:
            os.umask(before)
        self.assertIn("SECRET-1", store.path.read_text())
        self.assertEqual(store.path.stat().st_mode & 0o777, 0o600)

    def test_containers_whose_stop_was_cut_short_are_stopped_before_anything_else(self) -> None:
        """The gateway (and podman's service with it) died while podman stopped containers: podman
        4.3 keeps such a container 'stopping' for good, refuses to start it, and a forced removal
        forgets it while its process runs on. The next start stops each again first: a stale
        version is then removed (it was removed with its process left running, unseen, beside the
        new version), the current one runs or stays stopped as wished (it was started in vain
        until FATAL, 'container state improper', or listed STOPPED while it ran)."""
        store = ContainerStore(self.state)
        running = Deployed("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0.0), "img2",
                           "sha256:d2")
        stopped = Deployed("other", "1", ContainerDescription(image="reg:5000/app:1"), "img1", "sha256:d1",
                           wish="stopped")
        store.save(DesiredState({"app": running, "other": stopped}, {"img1", "img2"}))
        for tag in ("1", "2"):
            self.runtime.images[f"img{tag}"] = self.runtime.registry[f"reg:5000/app:{tag}"]
        for cid, name, app in (("old", "app.0123", "app"), ("cur", running.container_name, "app"),
                               ("oth", stopped.container_name, "other")):
            self.runtime.containers_by_id[cid] = ContainerState(cid, name, {LABEL_APP: app}, False, 5, 0,
                                                                stopping=True)
        self.make()
        self.assertEqual(self.runtime.orphans, [])
        self.assertLess(self.runtime.calls.index(("stop", "old")), self.runtime.calls.index(("rm", "old")))
        self.assertEqual(sorted(self.runtime.containers_by_id), ["cur", "oth"])
        self.assertEqual((self.unit().container_id, self.unit().state), ("cur", ProgramState.RUNNING))
        self.assertTrue(self.runtime.containers_by_id["cur"].running)
        self.assertEqual(self.unit("other").state, ProgramState.STOPPED)
        self.assertFalse(self.runtime.containers_by_id["oth"].stopping)
        self.assertEqual(self.unit("other").exitstatus, 137)

    def test_an_unusable_state_file_is_set_aside_and_its_containers_are_left_running(self) -> None:
        """A state.json the gateway cannot use at start (not JSON, or not its shape: the gateway
        then failed to start at all, 'list' object has no attribute 'items') is moved aside to
        state.json.damaged and logged; the containers of the apps it can no longer name were
        removed as strays, an installed app lost for good: they are left running for this run,
        each named in a warning, until the file is restored."""
        from twisted.logger import LogLevel, formatEvent

        from tests.logevents import capture_log_events

        description = ContainerDescription(image="reg:5000/app:2")
        deployed = Deployed("app", "2", description, "img2", "sha256:d2")
        self.runtime.images["img2"] = self.runtime.registry["reg:5000/app:2"]
        store = ContainerStore(self.state)
        for damage in ('{"apps": ', '{"apps": [1]}', '{"apps": {"app": 5}}', '{"apps": {}, "images": 5}', "[1]"):
            self.runtime.containers_by_id["cur"] = ContainerState("cur", deployed.container_name,
                                                                  {LABEL_APP: "app"}, True, 6)
            store.save(DesiredState({"app": deployed}, {"img2"}))
            store.path.write_text(damage)
            events = capture_log_events(self)
            operations = self.make()
            self.assertEqual(list(self.runtime.containers_by_id), ["cur"], damage)
            self.assertTrue(self.runtime.containers_by_id["cur"].running, damage)
            self.assertEqual(store.path.with_name("state.json.damaged").read_text(), damage)
            self.assertEqual(operations.statuses(), [])
            errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
            self.assertEqual(len(errors), 1, errors)
            self.assertTrue(errors[0].startswith(f"containers: unusable {store.path} ("), errors[0])
            self.assertIn(f"moved to {store.path}.damaged", errors[0])
            warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
            self.assertIn(f"containers: leaving {deployed.container_name} (app app) as it is: the state file"
                          " that named it was unusable; stop the gateway and put it back from"
                          f" {store.path}.damaged to take it in hand again (the next start removes it)",
                          warnings)
            self.successResultOf(operations.reconcile())  # (again: the event stream reopened, say)
            self.assertEqual(list(self.runtime.containers_by_id), ["cur"], damage)
            operations.close()

    def test_an_adopted_declared_container_whose_image_was_unrecorded_reports_its_digest(self) -> None:
        """A declared container whose entry names no image (its state file was unusable at a
        start, or the write after its pull refused) is adopted running, and its image is learnt
        from the container: ``image_digest`` is reported again, and the image is one the gateway
        brought in (pruned once no version uses it). It was reported "" for as long as the
        container ran, and the image was left in podman's store for good."""
        description = ContainerDescription(image="reg:5000/app:1")
        unrecorded = Deployed("app", "config", description, "", "", "running", "config")
        self.runtime.images["img1"] = self.runtime.registry["reg:5000/app:1"]
        self.runtime.containers_by_id["cur"] = ContainerState("cur", unrecorded.container_name, {LABEL_APP: "app"},
                                                              True, 6, image_id="img1")
        store = ContainerStore(self.state)
        store.save(DesiredState({"app": unrecorded}, set()))
        operations = self.make({"app": description})
        self.assertEqual(list(self.runtime.containers_by_id), ["cur"])
        [status] = operations.statuses()
        self.assertEqual((status.state, status.image_digest), (ProgramState.RUNNING, "sha256:d1"))
        saved, _ = store.load()
        self.assertEqual((saved.apps["app"].image_id, saved.apps["app"].image_digest, saved.images),
                         ("img1", "sha256:d1", {"img1"}))
        self.assertNotIn(("pull", "reg:5000/app:1"), [call[:2] for call in self.runtime.calls])

    def test_apps_stay_listed_while_the_runtime_does_not_answer_at_the_start(self) -> None:
        """When podman does not answer at the gateway's start, every container app is still
        listed (FATAL, saying podman does not answer), and a stop is kept and answered; they
        were listed nowhere (GET /apps, engine_report) and a stop answered 'no app or program'.
        Once podman answers they are taken in hand as usual."""
        description = ContainerDescription(image="reg:5000/app:2")
        ContainerStore(self.state).save(DesiredState({"app": Deployed("app", "2", description, "img2", "sha256:d2")},
                                                     {"img2"}))
        self.runtime.images["img2"] = self.runtime.registry["reg:5000/app:2"]
        self.runtime.containers_by_id["cur"] = ContainerState(
            "cur", Deployed("app", "2", description, "img2", "sha256:d2").container_name, {LABEL_APP: "app"}, True, 6)
        events = self.runtime.events
        self.runtime.events = lambda on_event: fail(RuntimeUnavailable("podman does not answer: no socket"))
        operations = self.make()
        [status] = operations.statuses()
        self.assertEqual((status.name, status.state, status.version, status.image),
                         ("app", ProgramState.FATAL, "2", "reg:5000/app:2"))
        self.assertEqual(status.error, "podman does not answer: no socket (the gateway takes the container in "
                                        "hand once it answers)")
        self.successResultOf(operations.stop("app"))
        self.assertEqual(operations.status("app")[0].state, ProgramState.FATAL)
        self.runtime.events = events  # type: ignore[method-assign]
        self.clock.advance(5.0)
        self.assertEqual((self.unit().container_id, self.unit().state, self.unit().status().error),
                         ("cur", ProgramState.STOPPED, ""))

    def test_podman_not_reached_is_the_services_failure_until_it_answers(self) -> None:
        """While podman does not answer (at the start, or after its event stream ended) the
        supervisor's ``runtime_failing`` says so, since the first failure, with the last one's
        words and the tries failed; it is ``None`` again once the stream is open. Before, only
        the container apps and the log said podman was down; the service showed ``running``."""
        events = self.runtime.events
        self.runtime.events = lambda on_event: fail(RuntimeUnavailable("podman does not answer: no socket"))
        self.clock.advance(100)
        self.make()
        self.assertEqual(self.supervisor.runtime_failing.now,
                         Degraded(UNREACHABLE, "podman does not answer: no socket", 100.0, 1))
        self.clock.advance(5.0)  # a try again: it still does not answer
        self.assertEqual(self.supervisor.runtime_failing.now,
                         Degraded(UNREACHABLE, "podman does not answer: no socket", 100.0, 2))
        self.runtime.events = events  # type: ignore[method-assign]
        self.clock.advance(5.0)
        self.assertTrue(self.supervisor.subscribed)
        self.assertIsNone(self.supervisor.runtime_failing.now)
        self.runtime.streams[-1].cancel()  # its service died: no event is seen until it is open again
        self.assertEqual(self.supervisor.runtime_failing.now,
                         Degraded(UNREACHABLE, "its event stream ended (closed)", 110.0, 1))
        self.clock.advance(5.0)
        self.assertIsNone(self.supervisor.runtime_failing.now)
        self.assertEqual(self.supervisor.runtime_failing.total, 3)

    def test_a_runtime_that_stays_down_is_logged_once_per_interval(self) -> None:
        """While podman does not answer, the event stream is tried again with backoff (every 30 s
        at most) for as long as it is down, and each try wrote 'containers: the runtime does not
        answer: ...' (2,880 lines a day); now the first, then one line every 10 minutes saying
        how many tries it stands for."""
        self.runtime.events = lambda on_event: fail(RuntimeUnavailable("podman does not answer: no socket"))
        with capturedLogs() as logged:
            self.make()
            self.clock.pump([5.0] * 132)  # 11 minutes, a try every 5 s
            down = [formatEvent(e) for e in logged if "the runtime does not answer:" in formatEvent(e)]
            self.assertEqual(down, ["containers: the runtime does not answer: podman does not answer: no socket",
                                    "containers: the runtime does not answer: podman does not answer: no socket"
                                    " (120 tries since the last such line; logged at most once every 10 minutes"
                                    " while it goes on)"])

    def test_a_podman_service_in_a_crash_loop_is_logged_once_per_interval(self) -> None:
        """podman's service that keeps dying a while after each start (restarted by the gateway
        for ever) wrote at each death that the event stream ended, that the runtime does not
        answer, and that it is followed again; now each of them once, then once every 10
        minutes, the first two with a count, the third held back with the end it follows."""
        self.make()
        events = self.runtime.events

        def down(on_event: Any) -> Deferred[Any]:
            return fail(RuntimeUnavailable("podman does not answer: no socket"))
        with capturedLogs() as logged:
            for _ in range(11):  # 11 minutes: up 50 s, then down for a try
                self.clock.advance(50.0)
                self.runtime.events = down
                self.runtime.streams[-1].cancel()  # the service died
                self.clock.advance(5.0)  # a try: it does not answer
                self.runtime.events = events  # type: ignore[method-assign]
                self.clock.advance(5.0)  # it answers again
                self.assertTrue(self.supervisor.subscribed)
        lines = [formatEvent(e) for e in logged if "runtime" in formatEvent(e)]
        self.assertEqual(lines, [
            "containers: the runtime's event stream ended (closed); following it again",
            "containers: the runtime does not answer: podman does not answer: no socket",
            "containers: following the runtime's events again",
            "containers: the runtime's event stream ended (closed); following it again (10 times since the last"
            " such line; logged at most once every 10 minutes while it goes on)",
            "containers: the runtime does not answer: podman does not answer: no socket (10 tries since the last"
            " such line; logged at most once every 10 minutes while it goes on)",
            "containers: following the runtime's events again"])

    def test_update_rollback_restores_the_old_container(self) -> None:
        """A new version that dies in the health window is removed and the old container runs again."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        old = self.unit().container_id
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        new = self.unit().container_id
        self.runtime.exit(new, 1)
        result = self.successResultOf(update)
        self.assertEqual((result.outcome, result.previous), ("rolled-back", "1"))
        self.assertEqual((self.unit().container_id, self.unit().version, self.unit().state),
                         (old, "1", ProgramState.RUNNING))
        self.assertNotIn(new, self.runtime.containers_by_id)
        self.assertNotIn("img2", self.runtime.images)

    def test_a_rollback_persists_the_old_version_before_it_acts(self) -> None:
        """A new version failed its health gate: the state file says the old version again before
        the new container's output is collected and it is removed, so a crash in the rollback ends as a rollback
        (the next start runs the old version, and the update run again meets the health gate
        again). The file still said the new version while the rollback stopped it (up to 2 s
        waiting for its output) and removed it: a crash there left the failed version current,
        created again and started by the next start, and the update run again ended
        FINISHED_SUCCESS, 'it was already current'."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        new = self.unit().container_id
        remove, seen = self.runtime.remove, list[str]()

        def removing(container_id: str) -> Deferred[None]:
            if container_id == new:
                seen.append(ContainerStore(self.state).load()[0].apps["app"].version)
            return remove(container_id)
        self.runtime.remove = removing  # type: ignore[method-assign]
        self.runtime.exit(new, 1)
        result = self.successResultOf(update)
        self.assertEqual(result.outcome, "rolled-back")
        self.assertEqual(seen, ["1"])
        self.assertEqual((self.unit().version, self.unit().state), ("1", ProgramState.RUNNING))

    def killed_in_a_rollback(self) -> tuple[str, str]:
        """``app`` 1 installed, ``app`` 2 failing its health gate, the gateway killed as its
        rollback removes 2's container (the old version persisted current again); returns the
        ids of 1's container and 2's."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0.0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        old = self.unit().container_id
        operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0.0))
        new = self.unit().container_id
        remove = self.runtime.remove
        self.runtime.remove = lambda container_id: Deferred()  # type: ignore[method-assign]  # killed here
        self.runtime.exit(new, 1)
        self.runtime.remove = remove  # type: ignore[method-assign]
        return old, new

    def test_an_update_killed_in_its_rollback_ends_rolled_back_without_a_second_try(self) -> None:
        """The gateway is killed while it rolls back an update that failed its health gate (the
        old version persisted current again, the new container not yet removed): the next start
        runs the old version and removes the new container, and the update run again after the
        restart ends ``rolled-back`` with the health gate's reason at once. It pulled, created and
        started the failed version again, stopping the old one for a second health window."""
        old, new = self.killed_in_a_rollback()
        self.runtime.calls.clear()
        self.clock = Clock()  # the next start (the killed gateway's timers are gone with it)
        operations = self.make()
        self.assertEqual((self.unit().container_id, self.unit().state), (old, ProgramState.RUNNING))
        self.assertNotIn(new, self.runtime.containers_by_id)
        again = self.successResultOf(operations.install(
            "app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0.0)))
        self.assertEqual((again.outcome, again.previous), ("rolled-back", "1"))
        self.assertIn("app went EXITED (exit status 1) during the health window", again.message)
        self.assertIn("restarted during the rollback", again.message)
        self.assertEqual([c for c in self.runtime.calls if c[0] in ("pull", "create")], [])
        self.assertEqual((self.unit().container_id, self.unit().state), (old, ProgramState.RUNNING))
        self.assertNotIn("img2", self.runtime.images)
        self.assertEqual(ContainerStore(self.state).load()[0].rollbacks, {})
        later = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0.0))
        self.clock.advance(3)  # an operator's later try of the same version is run, once more gated
        self.assertTrue(self.successResultOf(later).ok)

    def test_an_uninstall_forgets_a_rollback_a_kill_cut_short(self) -> None:
        """Killed in the rollback of ``app`` 2, then the app uninstalled (the update not run
        again): a fresh install of ``app`` 2 is run and gated as any other. The rollback's record
        outlived the app, and that install ended ``rolled-back`` at once, '2 is not tried again'."""
        self.killed_in_a_rollback()
        self.clock = Clock()  # the next start
        operations = self.make()
        self.successResultOf(operations.uninstall("app"))
        self.assertEqual(ContainerStore(self.state).load()[0].rollbacks, {})
        fresh = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0.0))
        self.clock.advance(3)
        result = self.successResultOf(fresh)
        self.assertEqual((result.outcome, result.ok), ("installed", True), result.message)

    def test_an_update_with_autostart_false_is_installed_stopped_without_a_health_gate(self) -> None:
        """A description with ``autostart: false`` is installed STOPPED (docs/containers.md): the
        install ends at once, no health window is watched, the old container is stopped and
        removed, and the wish recorded is ``stopped``, so it holds across restarts."""
        operations = self.make()
        operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        old = self.unit().container_id
        result = self.successResultOf(operations.install(
            "app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0, autostart=False)))
        self.assertEqual((result.ok, result.previous), (True, "1"))
        self.assertEqual((self.unit().version, self.unit().state), ("2", ProgramState.STOPPED))
        self.assertNotIn(old, self.runtime.containers_by_id)
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].wish, "stopped")

    def stop_service(self, operations: ContainerOperations) -> Any:
        """Stop a containers service made of ``operations`` and this test's supervisor, as a
        configuration change (or SIGTERM) does; fires as its stopService does."""
        from gateway.apps.settings import AppsSettings
        from gateway.containers.service import ContainersService
        from gateway.containers.settings import ContainersSettings

        service = ContainersService(ContainersSettings(enabled=True, start_service=False), AppsSettings(),
                                    self.state, self.clock, self.writer, client=object())  # type: ignore[arg-type]
        service.supervisor, service.operations, service.running = self.supervisor, operations, True
        return service.stopService()

    def test_an_update_pulling_when_the_service_stops_changes_nothing(self) -> None:
        """A configuration change (or SIGTERM) while a container update waits for its image: the
        update does nothing more once the image is there (docs/commands.md step 3: the services
        restart; containers.md: the desired state is the service's), and the service's stop fires
        once it has ended. It went on after the stop: created and started the new version beside
        the next service (which had loaded the old one and ran it), with no one supervising it."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        pulling: Deferred[ImageInfo] = Deferred()
        pull = self.runtime.pull
        self.runtime.pull = lambda *args: pulling  # type: ignore[method-assign]
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        stopped = self.stop_service(operations)
        self.assertNoResult(stopped)
        self.runtime.pull = pull  # type: ignore[method-assign]
        pulling.callback(self.runtime.registry["reg:5000/app:2"])
        self.successResultOf(stopped)
        result = self.successResultOf(update)
        self.assertEqual(result.outcome, "failed")
        self.assertIn("the containers service is stopping", result.message)
        self.assertEqual(len([c for c in self.runtime.calls if c[0] == "create"]), 1)
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].version, "1")
        self.make()
        self.assertEqual((self.unit().version, self.unit().state), ("1", ProgramState.RUNNING))

    def test_an_update_whose_pull_the_stop_cuts_off_says_the_service_stops(self) -> None:
        """The stop ends podman's service too, so a pull under way fails (its connection lost):
        the update ends failed saying the service stops and nothing changed, as when the image
        came in time; it said only that podman did not answer."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        pulling: Deferred[ImageInfo] = Deferred()
        self.runtime.pull = lambda *args: pulling  # type: ignore[method-assign]
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        stopped = self.stop_service(operations)
        pulling.errback(RuntimeUnavailable("podman does not answer: POST /images/pull: the connection was lost"))
        self.successResultOf(stopped)
        result = self.successResultOf(update)
        self.assertEqual((result.outcome, result.message), (
            "failed", "the containers service is stopping (the gateway stops, or restarts for a configuration "
                      "change) before app 2 was created: nothing changed (podman does not answer: POST "
                      "/images/pull: the connection was lost)"))
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].version, "1")

    def held_fetcher(self, credentials: Path | None = None, declared: dict[str, ContainerDescription] | None = None
                     ) -> tuple[ContainerOperations, HeldThreads]:
        """Operations whose image fetcher's disk work (an archive's sha256, the credentials
        file's read) waits in its thread until the test runs it."""
        disk = HeldThreads()
        self.supervisor = ContainerSupervisor(self.runtime, self.clock, self.writer, self.state / "logs",
                                              1.0, 8.0, 2, retry=lambda attempt: 5.0)
        operations = ContainerOperations(self.runtime, self.supervisor,
                                         ImageFetcher(self.runtime, disk, ("reg:5000",), credentials),
                                         ContainerStore(self.state), self.clock, inline, 3.0, declared or {})
        self.successResultOf(operations.load())
        return operations, disk

    def test_a_stop_while_the_credentials_are_read_sends_no_pull(self) -> None:
        """A stop that lands while an update's pull reads the credentials file (a thread) sends
        no pull once the read returns: the update ends failed saying the service stops. The pull
        went to podman after the stop (a podman not started by the gateway pulled the image, which
        no desired state recorded, so no prune ever removed it)."""
        credentials = self.state / "auth.json"
        credentials.write_text('{"auths": {}}')
        operations, disk = self.held_fetcher(credentials)
        update = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.assertEqual(len(disk.calls), 1)
        stopped = self.stop_service(operations)
        self.assertNoResult(stopped)
        disk.release_all()
        self.successResultOf(stopped)
        result = self.successResultOf(update)
        self.assertEqual((result.outcome, result.message), (
            "failed", "the containers service is stopping (the gateway stops, or restarts for a configuration "
                      "change) before app 1 was created: nothing changed (reg:5000/app:1 was not pulled)"))
        self.assertEqual(self.runtime.calls, [])

    def test_a_stop_while_a_declared_containers_credentials_are_read_pulls_nothing_and_logs_no_error(
            self) -> None:
        """A stop that lands while the start's pull of a declared container's image reads the
        credentials file sends no pull and logs no error: the next start pulls it."""
        credentials = self.state / "auth.json"
        credentials.write_text('{"auths": {}}')
        with capturedLogs() as events:
            operations, disk = self.held_fetcher(credentials, {"app": ContainerDescription(image="reg:5000/app:1")})
            self.assertEqual(len(disk.calls), 1)
            stopped = self.stop_service(operations)
            disk.release_all()
            self.successResultOf(stopped)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"].name in ("warn", "error", "critical")], [])
        self.assertEqual(self.runtime.calls, [])

    def test_a_stop_while_an_archive_is_hashed_loads_nothing(self) -> None:
        """A stop that lands while an update's OCI archive is hashed (a thread, long for a big
        archive) loads nothing into podman once the hash is done."""
        import hashlib
        import json

        operations, disk = self.held_fetcher()
        loads: list[Path] = []
        self.runtime.load = lambda archive: loads.append(archive) or succeed([])  # type: ignore[method-assign]
        work = self.state / "artifacts"
        work.mkdir()
        (work / "app.json").write_text(json.dumps({"image": "reg:5000/app:1", "archive": "app-1.oci.tar"}))
        (work / "app-1.oci.tar").write_bytes(b"an OCI archive")
        digest = hashlib.sha256(b"an OCI archive").hexdigest()
        update = operations.install_files("app", "1", [work / "app.json", work / "app-1.oci.tar"],
                                          {"app-1.oci.tar": {"sha256": digest}})
        self.assertEqual(len(disk.calls), 1)
        stopped = self.stop_service(operations)
        disk.release_all()
        self.successResultOf(stopped)
        result = self.successResultOf(update)
        self.assertEqual(result.outcome, "failed")
        self.assertIn("the containers service is stopping", result.message)
        self.assertEqual(loads, [])

    def test_an_update_in_its_health_window_when_the_service_stops_stays_current(self) -> None:
        """A configuration change in a container update's health window: the new version stays
        current, unwatched, as after a restart in the window (docs/updates.md), and the stopped
        service acts no more: the next service's changes to the desired state stay. The old
        service's install watched on, then removed the old container and saved the desired state
        as it knew it, undoing the new service's stop of the app."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        self.assertEqual((self.unit().version, self.unit().state), ("2", ProgramState.RUNNING))
        self.successResultOf(self.stop_service(operations))
        result = self.successResultOf(update)
        self.assertEqual(result.outcome, "failed")
        self.assertIn("health window: it stays current", result.message)
        following = self.make()
        self.assertEqual((self.unit().version, self.unit().state), ("2", ProgramState.RUNNING))
        stopping = following.stop("app")
        self.successResultOf(stopping)
        self.clock.advance(3)
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].wish, "stopped")
        self.assertEqual(self.unit().state, ProgramState.STOPPED)

    def slow_stops(self) -> ContainerOperations:
        """Operations with app 1 running, whose container stops take longer than the test."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        self.runtime.stop = lambda *args: Deferred()  # type: ignore[method-assign]
        return operations

    def test_an_operators_stop_under_way_when_the_service_stops_ends(self) -> None:
        """A configuration change (or SIGTERM) while an operator's stop waits for podman (the
        container given its stop_timeout): the stop ends, and so does the service's stop. It
        waited for ever (the unit, forgotten by the service's stop, never said it had stopped):
        the service's stop never ended ('containers did not stop within 4.0 s'), and the next
        service started beside the one still at work."""
        operations = self.slow_stops()
        stopping = operations.stop("app")
        self.assertNoResult(stopping)
        self.successResultOf(self.stop_service(operations))
        self.assertIsNone(self.successResultOf(stopping))
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].wish, "stopped")

    def test_an_operators_stop_podman_does_not_finish_fails_saying_so(self) -> None:
        """An operator's stop whose request podman's service does not answer in full (it died)
        fails with podman's error, as containers.md says of such a request (409 through the admin
        API and the commands); the wish to stop is kept, and the next look at the runtime's
        states, once the service is back, finishes the stop. It answered that the app had
        stopped. A restart's stop or an update's stop of the old container that fails so goes
        on, as before: its start follows."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        stop = self.runtime.stop
        lost = "podman does not answer: POST /containers/c1/stop: the connection was lost"
        self.runtime.stop = lambda *args: fail(RuntimeUnavailable(lost))  # type: ignore[method-assign]
        failure = self.failureResultOf(operations.stop("app"), RuntimeFailure)
        self.assertEqual(failure.getErrorMessage(), lost)
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].wish, "stopped")
        self.assertEqual(self.unit().state, ProgramState.STOPPED)
        self.successResultOf(operations.start("app"))
        self.assertEqual(self.unit().state, ProgramState.RUNNING)
        self.successResultOf(operations.restart("app"))
        self.assertEqual(self.unit().state, ProgramState.RUNNING)
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        self.runtime.stop = stop  # type: ignore[method-assign]
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(update).ok)

    def test_an_update_stopping_the_old_container_when_the_service_stops_ends(self) -> None:
        """The same while an update stops the old container: the update ends failed, the new
        version current (persisted before the old one was stopped), and the service's stop ends."""
        operations = self.slow_stops()
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        self.assertNoResult(update)
        self.successResultOf(self.stop_service(operations))
        result = self.successResultOf(update)
        self.assertEqual(result.outcome, "failed")
        self.assertIn("once app 2 was current, before it started", result.message)
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].version, "2")

    def test_rollback_report_has_the_output_of_a_container_that_died_at_once(self) -> None:
        """A new version that prints and dies before the runtime has answered the inspect that
        follows its start: the rolled-back report still carries what it printed (its output is
        followed from the start's answer on, not from the inspect's)."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        self.runtime.hold_inspect()
        update = operations.install("app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        new = self.unit().container_id
        self.runtime.print(new, 1, b"dying\n")
        self.runtime.exit(new, 3)
        result = self.successResultOf(update)
        self.assertEqual(result.outcome, "rolled-back")
        self.assertIn("dying", result.log)
        self.runtime.release_inspects()  # the new one's answers NotFound: it is gone
        self.assertEqual((self.unit().version, self.unit().state), ("1", ProgramState.RUNNING))
        self.assertIsNotNone(self.unit().pid)

    def test_a_disk_that_refuses_the_writes_at_start_does_not_stop_the_containers(self) -> None:
        """At start, the desired state (the config's containers taken in, then each declared
        container's image once pulled) is written; a disk that refuses those writes (full or
        read-only at boot) is logged, an error naming the file each time, and the containers
        are taken in hand as the file and the config say (the next start derives the same from
        them again). The load failed with the bare OSError, and the gateway with it: 'gateway
        failed to start: [Errno 28] No space left on device'; a write refused after a pull left
        that container and every later one STARTING for good. The next write that works (an
        operator's stop) holds everything."""
        from twisted.logger import LogLevel, formatEvent

        from tests.logevents import capture_log_events

        description = ContainerDescription(image="reg:5000/app:1", startsecs=0)
        ContainerStore(self.state).save(DesiredState({"app": Deployed("app", "config", description, "", "",
                                                                      "stopped", "config")}, set()))
        before = (self.state / "containers" / "state.json").read_bytes()
        _, refused = self.refuse_saves(errno.ENOSPC)
        events = capture_log_events(self)
        operations = self.make({"app": description, "other": description})
        self.assertEqual((self.state / "containers" / "state.json").read_bytes(), before)
        self.assertEqual((self.unit("app").state, self.unit("other").state), (ProgramState.STOPPED, ProgramState.RUNNING))
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        # (the start's write, then one after each declared container's image was pulled)
        self.assertEqual(errors, 3 * [f"containers: cannot write {self.state / 'containers' / 'state.json'}"
                                      " (No space left on device): the containers follow it and the config as"
                                      " they are; it is written with the next change"])
        refused.restore()
        self.successResultOf(operations.stop("other"))
        apps = ContainerStore(self.state).load()[0].apps
        self.assertEqual((apps["app"].wish, apps["other"].wish), ("stopped", "stopped"))

    def test_a_wish_the_disk_refuses_changes_nothing(self) -> None:
        """A stop or restart whose state.json the disk refuses (full, read-only) fails with
        DesiredStateError saying why, and changes nothing: the container runs on, and the
        wish the next write (and so the next start) would keep is still running. The wish
        was changed in memory before the write."""
        operations = self.make({name: ContainerDescription(image="reg:5000/app:1", startsecs=1)
                                for name in ("app", "other")})
        self.clock.advance(1)
        _, refused = self.refuse_saves(errno.ENOSPC)
        calls = len(self.runtime.calls)
        for operation in (operations.restart, operations.stop):
            failure = self.failureResultOf(operation("app"), DesiredStateError)
            self.assertIn(f"({self.state / 'containers' / 'state.json'}: No space left on device): nothing changed",
                          failure.getErrorMessage())
        self.assertEqual((self.runtime.calls[calls:], self.unit().state), ([], ProgramState.RUNNING))
        refused.restore()
        stopped = operations.stop("other")  # a write that succeeds: what memory holds
        self.runtime.exit(self.unit("other").container_id, 0)
        self.successResultOf(stopped)
        apps = ContainerStore(self.state).load()[0].apps
        self.assertEqual((apps["app"].wish, apps["other"].wish), ("running", "stopped"))

    def test_an_update_the_disk_refuses_to_make_current_changes_nothing(self) -> None:
        """An update whose state.json write (the new version made current) the disk refuses
        (full, read-only) ends failed saying why and that nothing changed: its container and
        image are deleted, the old version runs on, and the next write keeps the old version. The install
        failed with the bare OSError ('[Errno 28] No space left on device' in the operation's
        status), left the new container and its image, and memory already held the new version
        current: the next write that succeeded (an operator's stop) made it current on disk,
        and the next start ran the version whose install had failed."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        old = self.unit().container_id
        _, refused = self.refuse_saves(errno.ENOSPC)
        result = self.successResultOf(operations.install(
            "app", "2", ContainerDescription(image="reg:5000/app:2", startsecs=0)))
        self.assertEqual((result.outcome, result.message), (
            "failed", f"cannot keep app 2 as the current version ({self.state / 'containers' / 'state.json'}: "
                      "No space left on device): nothing changed"))
        self.assertEqual(list(self.runtime.containers_by_id), [old])
        self.assertEqual(sorted(self.runtime.images), ["img1"])
        self.assertEqual((self.unit().version, self.unit().container_id, self.unit().state),
                         ("1", old, ProgramState.RUNNING))
        refused.restore()
        self.successResultOf(operations.stop("app"))
        saved = ContainerStore(self.state).load()[0].apps["app"]
        self.assertEqual((saved.version, saved.wish), ("1", "stopped"))

    def test_an_update_whose_last_write_the_disk_refuses_is_installed(self) -> None:
        """An update whose last state.json write (the images pruned after it) the disk refuses
        is installed all the same, as it is on disk and in podman: the file still lists the
        pruned images until the next prune forgets them. It failed with the bare OSError, the
        new version running."""
        _, saves, _, update = self.update_refusing_saves(lambda n: n > 1)
        self.clock.advance(3)
        result = self.successResultOf(update)
        self.assertEqual((result.ok, result.message), (True, "app 2 installed"))
        self.assertEqual(len(saves), 2)
        self.assertEqual((self.unit().version, self.unit().state), ("2", ProgramState.RUNNING))
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].version, "2")

    def test_a_rollback_whose_last_write_the_disk_refuses_is_rolled_back(self) -> None:
        """An update that failed its health gate, rolled back (the old version persisted and
        running again), whose last state.json write (no rollback under way, the images deleted)
        the disk refuses: it ends ``rolled-back`` all the same, as it is on disk and in podman.
        It failed with the bare OSError, the old version running."""
        _, saves, _, update = self.update_refusing_saves(lambda n: n > 2)
        self.runtime.exit(self.unit().container_id, 1)
        result = self.successResultOf(update)
        self.assertEqual((result.outcome, result.previous), ("rolled-back", "1"))
        self.assertEqual(len(saves), 3)
        self.assertEqual((self.unit().version, self.unit().state), ("1", ProgramState.RUNNING))
        self.assertEqual(ContainerStore(self.state).load()[0].apps["app"].version, "1")

    def test_a_rollback_whose_first_write_the_disk_refuses_is_rolled_back(self) -> None:
        """An update that failed its health gate whose rollback's first state.json write the disk
        refuses is rolled back all the same (the old version runs again); once the next write
        records it, the new version's image is deleted. It failed with the bare OSError."""
        _, saves, _, update = self.update_refusing_saves(lambda n: n == 2)
        image = self.runtime.containers_by_id[self.unit().container_id].image_id
        self.runtime.exit(self.unit().container_id, 1)
        result = self.successResultOf(update)
        self.assertEqual((result.outcome, result.previous), ("rolled-back", "1"))
        self.assertEqual((self.unit().version, self.unit().state), ("1", ProgramState.RUNNING))
        stored = ContainerStore(self.state).load()[0]
        self.assertEqual((stored.apps["app"].version, stored.rollbacks), ("1", {}))
        self.assertNotIn(image, stored.images)
        self.assertNotIn(image, self.runtime.images)

    def test_a_rollback_no_write_of_which_the_disk_takes_says_so_and_a_restart_converges(self) -> None:
        """An update that failed its health gate whose rollback the disk refuses to record at
        all ends ``rolled-back`` with one line naming the file; the old version runs. The file
        still says the new version is current: its image is kept, and a restart runs it, with
        one container for the app."""
        operations, _, patch, update = self.update_refusing_saves(lambda n: n >= 2)
        image = self.runtime.containers_by_id[self.unit().container_id].image_id
        self.runtime.exit(self.unit().container_id, 1)
        result = self.successResultOf(update)
        self.assertEqual((result.outcome, result.previous), ("rolled-back", "1"))
        self.assertIn(f"rolled back, but the disk refuses to record it ({self.state / 'containers' / 'state.json'}: "
                      f"{os.strerror(errno.ENOSPC)}): until the next write the file says 2 is current",
                      result.message)
        self.assertNotIn("\n", result.message)
        self.assertEqual((self.unit().version, self.unit().state), ("1", ProgramState.RUNNING))
        self.assertIn(image, self.runtime.images)
        patch.restore()
        self.successResultOf(self.stop_service(operations))
        self.make()
        self.assertEqual((self.unit().version, self.unit().state), ("2", ProgramState.RUNNING))
        self.assertEqual([s.labels["io.gateway.version"] for s in self.runtime.containers_by_id.values()], ["2"])

    def test_uninstall_deletes_the_log_files(self) -> None:
        """Uninstalling a container app deletes its log files and their rotated backups, as
        uninstalling a hosted app does; another app's logs stay."""
        operations = self.make()
        for name in ("app", "other"):
            done = operations.install(name, "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
            self.clock.advance(3)
            self.assertTrue(self.successResultOf(done).ok)
            self.runtime.print(self.unit(name).container_id, 1, b"out\n")
            self.runtime.print(self.unit(name).container_id, 2, b"err\n")
        logs = self.state / "logs"
        (logs / "app.log.1").write_bytes(b"rotated\n")
        self.assertEqual(sorted(p.name for p in logs.iterdir()),
                         ["app.err.log", "app.log", "app.log.1", "other.err.log", "other.log"])
        self.successResultOf(operations.uninstall("app"))
        self.assertEqual(sorted(p.name for p in logs.iterdir()), ["other.err.log", "other.log"])

    def test_an_uninstall_killed_half_way_is_finished_by_the_next_start(self) -> None:
        """The gateway is killed in the middle of an uninstall (the app gone from the state file,
        its container being removed): the next start removes the container, deletes the app's
        log files and the images only it used. The log files were left for good, and the next
        app of that name appended to them."""
        operations = self.make()
        for name in ("app", "other"):
            done = operations.install(name, "1" if name == "app" else "2",
                                      ContainerDescription(image=f"reg:5000/app:{1 if name == 'app' else 2}",
                                                           startsecs=0.0))
            self.clock.advance(3)
            self.assertTrue(self.successResultOf(done).ok)
            self.runtime.print(self.unit(name).container_id, 1, b"out\n")
        logs = self.state / "logs"
        remove = self.runtime.remove
        self.runtime.remove = lambda container_id: Deferred()  # type: ignore[method-assign]  # killed here
        operations.uninstall("app")
        self.runtime.remove = remove  # type: ignore[method-assign]
        self.assertIn("app.log", [p.name for p in logs.iterdir()])
        self.clock = Clock()  # the next start (the killed gateway's timers are gone with it)
        with capturedLogs() as events:
            self.make()
        self.assertEqual(sorted(p.name for p in logs.iterdir()), ["other.log"])
        self.assertEqual([c.labels[LABEL_APP] for c in self.runtime.containers_by_id.values()], ["other"])
        self.assertEqual(sorted(self.runtime.images), ["img2"])
        saved = ContainerStore(self.state).load()[0]
        self.assertEqual((sorted(saved.apps), saved.images, saved.uninstalling), (["other"], {"img2"}, set()))
        self.assertIn("containers: app's uninstall, cut short by a restart, is finished: its logs are deleted",
                      [formatEvent(e) for e in events])

    def test_an_uninstall_the_disk_refuses_changes_nothing(self) -> None:
        """An uninstall whose state.json the disk refuses (read-only) fails with
        DesiredStateError saying why and changes nothing: the container runs on and stays in
        the state file and in memory. It was stopped and forgotten in memory before the write,
        so the next successful write took it off disk though the uninstall had failed."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        _, refused = self.refuse_saves(errno.EROFS)
        calls = len(self.runtime.calls)
        failure = self.failureResultOf(operations.uninstall("app"), DesiredStateError)
        self.assertEqual(failure.getErrorMessage(), f"cannot forget app ({self.state / 'containers' / 'state.json'}:"
                                                    " Read-only file system): nothing changed")
        self.assertEqual((self.runtime.calls[calls:], self.unit().state), ([], ProgramState.RUNNING))
        refused.restore()
        self.successResultOf(operations.restart("app"))  # a later write keeps it
        self.assertIn("app", ContainerStore(self.state).load()[0].apps)
        self.successResultOf(operations.uninstall("app"))
        self.assertNotIn("app", ContainerStore(self.state).load()[0].apps)

    def test_an_uninstall_whose_last_write_the_disk_refuses_says_so(self) -> None:
        """An uninstall whose last write (the images it pruned) the disk refuses fails with
        DesiredStateError saying the app is uninstalled but its pruned images are not recorded
        (500 through the admin API, not an unexpected error); memory still lists those images,
        as the file does, and the next prune forgets them (podman no longer has them)."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        saves, refused = self.refuse_saves(errno.ENOSPC, lambda n: n == 2)
        failure = self.failureResultOf(operations.uninstall("app"), DesiredStateError)
        self.assertEqual(failure.getErrorMessage(),
                         f"app uninstalled, but cannot record that its images were deleted "
                         f"({self.state / 'containers' / 'state.json'}: No space left on device): "
                         "the next prune forgets them")
        self.assertNotIn("img1", self.runtime.images)
        # (the file says its uninstall is under way: a restart now would delete its logs again)
        self.assertEqual(ContainerStore(self.state).load()[0], DesiredState({}, {"img1"}, uninstalling={"app"}))
        refused.restore()
        done = operations.install("other", "1", ContainerDescription(image="reg:5000/app:2", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        self.assertEqual((ContainerStore(self.state).load()[0].images,
                          ContainerStore(self.state).load()[0].uninstalling), ({"img2"}, set()))

    def test_an_uninstall_podman_cannot_finish_says_so(self) -> None:
        """When podman does not remove the container (it answers an error), the uninstall still
        finishes (the app forgotten on disk and in memory, its logs deleted) and then fails
        with RuntimeFailure saying the app is uninstalled and its container is left for the
        next start (409 through the admin API); that start's reconcile removes it. Before, the
        runtime's bare error came back with the logs and images left behind."""
        operations = self.make()
        done = operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(done).ok)
        container = self.unit().container_id
        self.runtime.print(container, 1, b"out\n")
        self.patch(self.runtime, "remove", lambda container_id: fail(RuntimeFailure("container state improper")))
        failure = self.failureResultOf(operations.uninstall("app"), RuntimeFailure)
        self.assertEqual(failure.getErrorMessage(), "app uninstalled, but podman did not remove its container "
                                                    "(container state improper): the gateway removes it when it "
                                                    "next starts")
        self.assertEqual(ContainerStore(self.state).load()[0].apps, {})
        self.assertEqual(list((self.state / "logs").iterdir()), [])
        self.assertIn(container, self.runtime.containers_by_id)
        del self.runtime.remove  # (the patch's instance attribute: the fake's own method again)
        self.successResultOf(self.make().reconcile())
        self.assertNotIn(container, self.runtime.containers_by_id)

    def test_unknown_image_fails_and_keeps_the_running_version(self) -> None:
        """A reference the registry does not have: FAILED with the registry's words, nothing changed."""
        operations = self.make()
        operations.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        self.clock.advance(3)
        before = self.unit().container_id
        result = self.successResultOf(operations.install("app", "2", ContainerDescription(image="reg:5000/app:9")))
        self.assertEqual(result.outcome, "failed")
        self.assertIn("manifest unknown", result.message)
        self.assertEqual((self.unit().container_id, self.unit().state), (before, ProgramState.RUNNING))

    def test_archive_without_an_announced_sha256_is_refused(self) -> None:
        """An update whose description names an OCI archive that comes without an announced
        sha256 is refused before the runtime is asked anything (docs/containers.md: an archive
        without an announced sha256 is refused); it was answered failed, as a digest that did
        not match is."""
        import json

        operations = self.make()
        work = self.state / "artifacts"
        work.mkdir()
        (work / "app.json").write_text(json.dumps({"image": "reg:5000/app:1", "archive": "app-1.oci.tar"}))
        (work / "app-1.oci.tar").write_bytes(b"an OCI archive")
        files = [work / "app.json", work / "app-1.oci.tar"]
        for digests in ({}, {"app-1.oci.tar": {"md5": "0" * 32}}):
            result = self.successResultOf(operations.install_files("app", "1", files, digests))
            self.assertEqual((result.ok, result.outcome), (False, "refused"), digests)
            self.assertIn("sha256", result.message)
        self.assertEqual(self.runtime.calls, [])
        self.assertFalse(operations.owns("app"))

    def test_name_of_a_hosted_program_is_refused(self) -> None:
        """A container may not take a hosted program's name (one list of apps, unique names)."""
        operations = self.make()
        operations.taken = lambda name: name == "app"
        result = self.successResultOf(operations.install("app", "1", ContainerDescription(image="reg:5000/app:1")))
        self.assertEqual(result.outcome, "refused")
        self.assertIn("is the name of a hosted process app or program", result.message)

    def test_name_with_a_trailing_newline_is_refused(self) -> None:
        """A container named ``web\\n`` is refused before podman is asked anything: the check's
        regular expression took it (``$`` matches before a trailing newline), for a log file
        ``web\\n.log`` and log lines the newline splits."""
        operations = self.make()
        result = self.successResultOf(operations.install("web\n", "1", ContainerDescription(image="reg:5000/a:1")))
        self.assertEqual(result.outcome, "refused")
        self.assertIn("'web\\n' is not a valid container name", result.message)
        self.assertEqual(self.runtime.calls, [])

    def test_name_whose_logs_are_another_logs_is_refused(self) -> None:
        """A container named ``podman-service`` or ``<x>.err`` is refused: its log would be the
        podman service's log or the stderr log of program or container ``x``."""
        operations = self.make()
        for name, why in (("podman-service", "podman service's log"), ("web.err", "stderr log of 'web'")):
            result = self.successResultOf(operations.install(name, "1", ContainerDescription(image="reg:5000/a:1")))
            self.assertEqual(result.outcome, "refused", name)
            self.assertIn(why, result.message)
            self.assertFalse(operations.owns(name))
        self.assertEqual(self.runtime.calls, [])

    def test_declared_container_named_like_an_installed_app_is_not_run(self) -> None:
        """A container declared in the config with the name of an app already installed (the
        config check cannot see installed apps) is not run: listed FATAL with the reason, the
        app keeps its name (docs/containers.md: a container app's name is not the name of a
        hosted program or app); it was pulled and run, and the app then shadowed it."""
        self.supervisor = ContainerSupervisor(self.runtime, self.clock, self.writer, self.state / "logs",
                                              1.0, 8.0, 2, retry=lambda attempt: 5.0)
        operations = ContainerOperations(self.runtime, self.supervisor,
                                         ImageFetcher(self.runtime, inline, ("reg:5000",), None),
                                         ContainerStore(self.state), self.clock, inline, 3.0,
                                         {"web": ContainerDescription(image="reg:5000/app:1")},
                                         taken=lambda name: name == "web")
        self.successResultOf(operations.load())
        self.assertEqual(self.runtime.containers_by_id, {})
        self.assertNotIn(("pull", "reg:5000/app:1", "False"), self.runtime.calls)
        self.assertFalse(operations.owns("web"))
        [status] = operations.statuses()
        self.assertEqual((status.name, status.state), ("web", ProgramState.FATAL))
        self.assertIn("name of a hosted", status.error)

    def test_a_declared_container_cannot_be_replaced_by_an_update(self) -> None:
        """An update of a container declared in the config is refused saying so
        (docs/containers.md: they cannot be replaced by an update), and the declared one runs on."""
        operations = self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0)})
        self.clock.advance(3)
        running = self.unit().container_id
        result = self.successResultOf(operations.install("app", "2", ContainerDescription(image="reg:5000/app:2")))
        self.assertEqual((result.ok, result.outcome), (False, "refused"))
        self.assertEqual(result.message, "refused: 'app' is a container declared in the gateway config")
        self.assertEqual((self.unit().container_id, self.unit().state), (running, ProgramState.RUNNING))

    def test_uninstalling_a_declared_container_says_it_is_one(self) -> None:
        """A container declared in the config cannot be uninstalled (docs/containers.md: remove
        it from the config): the refusal says so, where it once said ``no installed container
        app 'app'`` of an app every listing shows; it runs on."""
        operations = self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0)})
        self.clock.advance(3)
        running = self.unit().container_id
        failure = self.failureResultOf(operations.uninstall("app"), UnknownAppError)
        self.assertEqual(failure.getErrorMessage(), "'app' is a container declared in the gateway config"
                                                    " (containers.containers), not an installed app: remove it"
                                                    " from the configuration to remove it")
        self.assertEqual((self.unit().container_id, self.unit().state), (running, ProgramState.RUNNING))
        failure = self.failureResultOf(operations.uninstall("nope"), UnknownAppError)
        self.assertEqual(failure.getErrorMessage(), "no installed container app 'nope'")

    def test_the_start_does_not_wait_for_a_declared_containers_image(self) -> None:
        """A declared container whose image is still being pulled when the gateway starts (a slow
        registry; one that never answers holds the pull for pull_timeout, 600 s) does not hold
        up the start: it is listed STARTING meanwhile, the operations asked for wait behind the
        pull, and it runs once its image is there. The containers service's start waited for the
        pull, and with it every service after it (updates, remote commands, the admin API: the
        gateway was not up for as long, and a self-update's health check gave up on it).

        The containers whose turn comes after that pull are listed from the start too (STARTING,
        or STOPPED when wished stopped): they were missing from GET /apps and engine_report, and
        GET /apps/NAME was a 404, for as long as the pull before them took."""
        pulling: Deferred[ImageInfo] = Deferred()
        self.runtime.pull = lambda *args: pulling  # type: ignore[method-assign]
        self.supervisor = ContainerSupervisor(self.runtime, self.clock, self.writer, self.state / "logs",
                                              1.0, 8.0, 2, retry=lambda attempt: 5.0)
        operations = ContainerOperations(
            self.runtime, self.supervisor, ImageFetcher(self.runtime, inline, ("reg:5000",), None),
            ContainerStore(self.state), self.clock, inline, 3.0,
            {"app": ContainerDescription(image="reg:5000/app:1", startsecs=0),
             "later": ContainerDescription(image="reg:5000/app:1", startsecs=0),
             "quiet": ContainerDescription(image="reg:5000/app:1", startsecs=0, autostart=False)})
        self.successResultOf(operations.load())
        self.assertEqual([(s.name, s.state, s.error) for s in operations.statuses()],
                         [("app", ProgramState.STARTING, ""), ("later", ProgramState.STARTING, ""),
                          ("quiet", ProgramState.STOPPED, "")])
        self.assertEqual([s.state for s in operations.status("later")], [ProgramState.STARTING])
        stopping = operations.stop("app")
        self.assertNoResult(stopping)
        pulling.callback(self.runtime.registry["reg:5000/app:1"])
        self.successResultOf(stopping)
        self.assertEqual(self.unit().state, ProgramState.STOPPED)
        self.successResultOf(operations.start("app"))
        self.assertEqual(self.unit().state, ProgramState.RUNNING)

    def test_a_failed_reconcile_lists_the_containers_it_did_not_reach_fatal_with_why(self) -> None:
        """The runtime answers the event stream but refuses the list of containers that the
        start's reconcile asks for (a podman that errs): the containers it never came to are
        listed FATAL with the reason, not STARTING (or STOPPED) with none for ever, as if the
        gateway were still about to take them in hand; ``app.start`` takes them in hand again."""
        answers = iter([RuntimeFailure("podman answered 500: database is locked")])
        listing = self.runtime.containers

        def containers(label: str) -> Deferred[list[ContainerState]]:
            failure = next(answers, None)
            return fail(failure) if failure is not None else listing(label)
        self.runtime.containers = containers  # type: ignore[method-assign]
        with capturedLogs() as events:
            operations = self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0),
                                    "quiet": ContainerDescription(image="reg:5000/app:1", autostart=False)})
        why = "podman answered 500: database is locked"
        self.assertEqual([(s.name, s.state) for s in operations.statuses()],
                         [("app", ProgramState.FATAL), ("quiet", ProgramState.FATAL)])
        self.assertTrue(all(why in s.error for s in operations.statuses()), operations.statuses())
        self.assertIn(f"containers: cannot take the containers in hand: {why}", [formatEvent(e) for e in events])
        self.successResultOf(operations.start("app"))
        self.clock.advance(3)
        self.assertEqual(self.unit().state, ProgramState.RUNNING)

    def test_declared_container_that_cannot_be_pulled_is_listed_fatal_with_the_reason(self) -> None:
        """A declared container whose image cannot be pulled is FATAL, and every listing (the
        read side, GET /apps, engine_report) carries the reason, not only the log."""
        from gateway.admin.api import programs
        from gateway.apps.service import AppsService
        from gateway.apps.settings import AppsSettings
        from gateway.telemetry.engine import engine_report
        from tests.apps.fakes import FakeProcessReactor

        operations = self.make({"app": ContainerDescription(image="reg:5000/app:9")})
        reactor = FakeProcessReactor()
        apps = AppsService(AppsSettings(), self.state, reactor, "mqtt://127.0.0.1:1883",
                           kill_group=reactor.kill_group, blocking=inline, threaded_logs=False,
                           process_table=reactor.table)
        apps.add_kind(operations)
        why = "cannot pull reg:5000/app:9: manifest unknown"
        [listed] = apps.snapshot().apps
        self.assertEqual((listed.status, listed.error), ("FATAL", why))
        self.assertEqual(engine_report(apps.snapshot())["apps"][0]["app"]["error"], why)
        [shown] = programs(apps.control.status("app"))
        self.assertEqual((shown.status, shown.error), ("FATAL", why))

    def test_containers_are_listed_after_the_hosted_programs(self) -> None:
        """The apps' snapshot (GET /apps, the remote apps command, engine_report) lists the
        hosted programs in name order, then the containers in name order, as readside.md and
        containers.md say: a container 'aaa' comes after a program 'zzz'."""
        from gateway.apps.service import AppsService
        from gateway.apps.settings import AppsSettings, ProgramSettings
        from tests.apps.fakes import FakeProcessReactor

        operations = self.make({"bbb": ContainerDescription(image="reg:5000/b:1"),
                                "aaa": ContainerDescription(image="reg:5000/a:1")})
        reactor = FakeProcessReactor()
        apps = AppsService(AppsSettings(programs={"zzz": ProgramSettings(command="zzz"),
                                                  "yyy": ProgramSettings(command="yyy")}),
                           self.state, reactor, "mqtt://127.0.0.1:1883", kill_group=reactor.kill_group,
                           blocking=inline, threaded_logs=False, process_table=reactor.table)
        apps.add_kind(operations)
        self.successResultOf(maybeDeferred(apps.startService))
        self.addCleanup(apps.stopService)
        self.assertEqual([(a.name, a.kind) for a in apps.snapshot().apps],
                         [("yyy", "process"), ("zzz", "process"), ("aaa", "container"), ("bbb", "container")])

    def test_logs_of_a_container_listed_fatal_before_it_was_deployed(self) -> None:
        """A declared container listed FATAL because its image cannot be pulled (now) has logs,
        those of its earlier runs (app.logs, GET /apps/NAME/logs): they were 'no app or program',
        a 404 for a name GET /apps lists. A name that is no container app is still unknown."""
        logs = self.state / "logs"
        logs.mkdir()
        (logs / "app.log").write_text("ran before\n")
        (logs / "app.err.log").write_text("complained before\n")
        operations = self.make({"app": ContainerDescription(image="reg:5000/app:9")})
        self.assertEqual(operations.status("app")[0].state, ProgramState.FATAL)
        self.assertEqual(self.successResultOf(operations.tail_bytes("app")), b"ran before\n")
        self.assertEqual(self.successResultOf(operations.tail_bytes("app", stderr=True)), b"complained before\n")
        self.assertEqual((operations.log_path("app"), operations.log_path("app", stderr=True)),
                         (logs / "app.log", logs / "app.err.log"))
        self.failureResultOf(operations.tail_bytes("nope"), UnknownAppError)
        self.assertRaises(UnknownAppError, operations.log_path, "nope")

    def test_a_death_in_the_reopened_streams_first_moment_is_seen(self) -> None:
        """A container that dies right after the stream was opened again, before the runtime
        delivers events, is found by the one later look and restarted by its policy, counted."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0)})
        cid = self.unit().container_id
        self.runtime.streams[0].cancel()
        self.clock.advance(5)  # reopened and reconciled: all is well
        self.assertEqual((len(self.runtime.streams), self.unit().restarts), (2, 0))
        state = self.runtime.containers_by_id[cid]
        # dies without an event (the new stream does not deliver yet)
        self.runtime.containers_by_id[cid] = ContainerState(cid, state.name, state.labels, False, None, 137)
        self.clock.advance(2)  # the later look
        self.assertEqual((self.unit().exitstatus, self.unit().restarts), (137, 1))
        self.clock.advance(1)
        self.assertTrue(self.runtime.containers_by_id[cid].running)
        self.assertIs(self.unit().state, ProgramState.RUNNING)

    def test_event_stream_reopened_and_reconciled(self) -> None:
        """When the event stream ends, it is opened again after the retry delay and the state is
        reconciled, so a death missed meanwhile is seen."""
        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0)})
        cid = self.unit().container_id
        self.runtime.streams[0].cancel()
        state = self.runtime.containers_by_id[cid]
        self.runtime.containers_by_id[cid] = ContainerState(cid, state.name, state.labels, False, None, 137)
        self.clock.advance(5)
        self.assertEqual(len(self.runtime.streams), 2)
        self.assertEqual((self.unit().exitstatus, self.unit().restarts), (137, 1))  # as its event would
        self.clock.advance(1)  # the restart delay
        self.assertTrue(self.runtime.containers_by_id[cid].running)
        self.assertIs(self.unit().state, ProgramState.RUNNING)


    def test_an_event_stream_cut_off_is_one_readable_line(self) -> None:
        """podman's service restarting cuts the event stream off; the warning said why as the
        list of Failure reprs Twisted wraps it in ("ended ([<twisted.python.failure.Failure
        twisted.internet.error.ConnectionDone: ...>, <...http._DataLoss: Chunked decoder in
        'CHUNK_LENGTH' state ...>])"). Now it says it in words."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseFailed
        from twisted.web.http import _DataLoss

        self.make({"app": ContainerDescription(image="reg:5000/app:1", startsecs=0)})
        cut = ResponseFailed([Failure(ConnectionDone()), Failure(_DataLoss("Chunked decoder in 'CHUNK_LENGTH' state"))])
        with capturedLogs() as events:
            self.runtime.streams[0].done.errback(Failure(cut))
        self.assertEqual([formatEvent(e) for e in events if "event stream" in e["log_format"]],
                         ["containers: the runtime's event stream ended (the server closed the connection; the body "
                          "ended before the end the server announced: its length, or its last chunk); following it "
                          "again"])


class NamesAcrossKindsTests(SynchronousTestCase):
    """A process app and a container app never share a name, also when their installs overlap
    (docs/containers.md: a container app's name is not the name of a hosted program or app;
    docs/apps.md: a package named like a container app is refused)."""

    def setUp(self) -> None:
        from gateway.apps.service import AppsService
        from gateway.apps.settings import AppsSettings
        from tests.apps.fakes import FakeProcessReactor

        self.state = Path(self.mktemp())
        self.state.mkdir()
        self.clock = Clock()
        self.runtime = FakeRuntime()
        self.runtime.registry["reg:5000/app:1"] = ImageInfo("img1", "sha256:d1", ("reg:5000/app:1",))
        self.reactor = FakeProcessReactor()
        self.settings = AppsSettings()
        self.apps = AppsService(self.settings, self.state, self.reactor, "mqtt://127.0.0.1:1883",
                                kill_group=self.reactor.kill_group, blocking=inline, threaded_logs=False,
                                process_table=self.reactor.table)
        self.successResultOf(self.apps.startService())
        supervisor = ContainerSupervisor(self.runtime, self.clock, AppLogWriter(10 * 2**20), self.state / "logs",
                                         1.0, 8.0, 2, retry=lambda attempt: 5.0)
        self.containers = ContainerOperations(self.runtime, supervisor,
                                              ImageFetcher(self.runtime, inline, ("reg:5000",), None),
                                              ContainerStore(self.state), self.clock, inline, 3.0, {},
                                              taken=self.apps.control.is_program)
        self.successResultOf(self.containers.load())
        self.apps.add_kind(self.containers)

    def package(self) -> Path:
        """A process app package named ``app`` (its install.sh runs until the test ends it)."""
        from tests.apps.packages import build_tarball

        packages = Path(self.mktemp())
        packages.mkdir()
        return build_tarball(packages / "app.v1.tar.gz", {
            "install.sh": "exit 0\n", "supervisor.conf": "[program:app]\ncommand = serve\nstartsecs = 0\n"})

    def test_a_container_install_while_a_process_app_of_its_name_installs_is_refused(self) -> None:
        """A container install of a name whose process app install is under way (its install.sh
        runs) is refused; the process app installs. Both installed: two apps of one name."""
        installing = self.apps.operations.install(self.package())
        result = self.successResultOf(self.containers.install("app", "1", ContainerDescription(image="reg:5000/app:1")))
        self.assertEqual((result.ok, result.outcome), (False, "refused"))
        self.assertIn("'app' is the name of a hosted process app or program", result.message)
        self.assertNotIn(("pull", "reg:5000/app:1", "False"), self.runtime.calls)
        self.reactor.last.exit(0)  # install.sh
        self.reactor.advance(self.settings.health_window)
        self.assertTrue(self.successResultOf(installing).ok)
        self.assertFalse(self.containers.owns("app"))

    def test_a_process_app_install_while_a_container_of_its_name_installs_is_refused(self) -> None:
        """A package whose name is that of a container app being installed (its image is being
        pulled) is refused before install.sh runs; the container installs."""
        held: Deferred[None] = Deferred()
        pull = self.runtime.pull
        self.patch(self.runtime, "pull", lambda *args: held.addCallback(lambda _: pull(*args)))
        installing = self.containers.install("app", "1", ContainerDescription(image="reg:5000/app:1", startsecs=0))
        result = self.successResultOf(self.apps.operations.install(self.package()))
        self.assertEqual((result.ok, result.outcome), (False, "refused"))
        self.assertIn("'app' is the name of a container app", result.message)
        self.assertEqual(self.reactor.processes, [])  # install.sh did not run
        held.callback(None)
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(installing).ok)
        self.assertIsNone(self.apps.operations.registry.current("app"))
        self.assertFalse(self.apps.control.is_program("app"))

