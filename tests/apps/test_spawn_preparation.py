"""A program's spawn is prepared off the reactor thread: its directory and user looked up, its
app's cgroup made, its record's start time read from ``/proc`` (the blocking runner is a
:class:`~tests.journal.helpers.ManualRunner` the test steps by hand: a thread pool, held)."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.health import watch_health
from gateway.apps.launch import CgroupJoin
from gateway.apps.leftovers import GroupRecords
from gateway.apps.logs import AppLogWriter
from gateway.apps.process import ProcessLauncher, ProgramProcess, ProgramSpec, ProgramState
from gateway.apps.settings import ProgramSettings
from gateway.apps.supervisor import AppSupervisor
from tests.apps.fakes import FakeProcessReactor
from tests.journal.helpers import ManualRunner
from tests.logevents import capture_log_events

S = ProgramState


class SpawnPreparationTests(SynchronousTestCase):
    """What a program does while its spawn is prepared, and after."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.runner = ManualRunner()  # (the launcher's)
        self.disk = ManualRunner()  # (the records')
        self.records = GroupRecords(Path(self.mktemp()), self.reactor.table, self.disk)  # type: ignore[arg-type]
        self.joins: list[str] = []
        self.launcher = ProcessLauncher(self.reactor, self.reactor.kill_group, records=self.records,
                                        prepare_cgroup=self.cgroup, blocking=self.runner)
        self.supervisor = AppSupervisor(self.launcher, self.reactor, AppLogWriter(10**6))

    def cgroup(self, app: str) -> Deferred[CgroupJoin | None]:
        """The accounting's prepare: its mkdir through the same runner."""
        return self.runner(lambda: self.joins.append(app)).addCallback(lambda _: CgroupJoin(f"/cg/{app}/cgroup.procs"))

    def program(self, name: str, cwd: Path = Path("/tmp"), startsecs: float = 0) -> ProgramProcess:
        settings = ProgramSettings(command=name, startsecs=startsecs)
        return self.supervisor.add(ProgramSpec(name, name, "1", settings, (name,), cwd, {}, None, None))

    def test_the_spawn_waits_for_its_preparation_off_the_thread(self) -> None:
        """start() spawns nothing on the reactor thread's turn: the program is STARTING with no
        pid while its directory, user and cgroup are looked at through the runner; then it is
        spawned into its cgroup, and its record's start time is read through the runner too."""
        process = self.program("web")
        process.start()
        self.assertEqual((process.state, process.pid, self.reactor.processes), (S.STARTING, None, []))
        self.runner.step()  # (its directory and user)
        self.assertEqual((self.reactor.processes, self.joins), ([], []))
        self.runner.step()  # (its cgroup made)
        self.assertEqual(self.joins, ["web"])
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertIn("/cg/web/cgroup.procs", self.reactor.last.args)
        self.assertEqual((process.state, process.pid), (S.RUNNING, self.reactor.last.pid))
        flushed = self.records.flush()
        self.assertNoResult(flushed)  # (its start time not read yet)
        self.disk.drain()  # (read, then written)
        self.successResultOf(flushed)
        recorded = json.loads(self.records.path.read_text())
        self.assertEqual(recorded["web"]["start"], 10 * process.pid)

    def test_programs_spawn_one_preparation_at_a_time_in_the_order_started(self) -> None:
        """Three programs started together: one preparation is under way at a time (a pool
        of threads would end them in any order), and they spawn in the order started."""
        for name in ("c", "a", "b"):
            self.program(name).start()
        self.assertEqual(len(self.runner.jobs), 1)
        while self.runner.jobs and len(self.reactor.processes) < 3:
            self.assertEqual(len(self.runner.jobs), 1)
            self.runner.step()
        self.assertEqual([p.args[-1] for p in self.reactor.processes], ["c", "a", "b"])
        self.assertEqual(self.joins, ["c", "a", "b"])

    def test_a_missing_directory_fails_the_start_as_before(self) -> None:
        """A directory that is not there, found off the thread, is a failed start with the
        same error line and status as when it was looked at on the thread: BACKOFF, then
        another try; nothing is spawned."""
        events = capture_log_events(self)
        missing = Path(self.mktemp())
        process = self.program("web", cwd=missing)
        process.start()
        self.runner.step()
        self.assertEqual((process.state, self.reactor.processes), (S.BACKOFF, []))
        self.assertEqual(process.error, f"cannot spawn: its directory {missing} does not exist")
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.error],
                         [f"apps: cannot spawn web: its directory {missing} does not exist"])
        self.assertEqual(self.joins, [])  # (no cgroup made for a start that failed)
        self.reactor.advance(1.0)
        self.assertEqual(process.state, S.STARTING)  # (tried again after its backoff)

    def test_a_stop_during_the_preparation_spawns_nothing(self) -> None:
        """A stop while the spawn is prepared is STOPPED at once (nothing runs to wait for);
        the preparation's end spawns nothing; a start after it spawns one copy."""
        process = self.program("web")
        process.start()
        self.successResultOf(process.stop())
        self.assertIs(process.state, S.STOPPED)
        process.start()
        self.runner.drain()
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertIs(process.state, S.RUNNING)

    def test_an_end_before_the_start_time_is_read_records_nothing(self) -> None:
        """A program whose group has ended (and been reaped: ``ended``) before its start time
        was read is not recorded: the pid may be another process's by then."""
        process = self.program("web")
        process.start()
        self.runner.step()
        self.runner.step()
        self.assertIsNotNone(process.pid)
        self.reactor.last.exit(1)
        self.disk.drain()
        self.successResultOf(self.records.flush())
        self.assertFalse(self.records.path.exists())

    def test_the_health_window_starts_once_the_programs_are_spawned(self) -> None:
        """The health gate's window is counted from the spawn, not from the start: a slow
        preparation (a slow disk) is not a program that failed to become RUNNING."""
        process = self.program("web", startsecs=1)
        process.start()
        gate = watch_health(self.supervisor, [process], 2.0, self.reactor)
        self.reactor.advance(10)
        self.assertNoResult(gate)
        self.runner.step()
        self.runner.step()
        self.reactor.advance(2.9)
        self.assertNoResult(gate)
        self.reactor.advance(0.1)
        self.successResultOf(gate)
