"""Telling an end by the kernel's OOM killer: the OOM kill count of the program's memory cgroup
(cgroup v1 and v2 layouts faked in a directory), and what the supervisor says with it."""

from __future__ import annotations

import signal
from pathlib import Path

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.launch import CgroupJoin
from gateway.apps.logs import AppLogWriter
from gateway.apps.oomkills import OomKillCounts, count_file, read_count
from gateway.apps.process import ProcessLauncher, ProgramProcess, ProgramSpec, ProgramState
from gateway.apps.settings import ProgramSettings
from gateway.cgroupmembership import parse_cgroups
from tests.apps.fakes import FakeProcessReactor
from tests.logevents import capture_log_events

V1 = parse_cgroups("9:name=systemd:/\n4:memory:/box/gw\n3:cpuset:/\n0::/\n")
V2 = parse_cgroups("0::/system.slice/gateway.service\n")
EVENTS = "low 0\nhigh 0\nmax 3\noom 1\noom_kill {}\noom_group_kill 0\n"


class CountFileTests(SynchronousTestCase):
    """Where the count is, for cgroup v1 and v2, and where there is none."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp())

    def cgroup(self, path: str, **files: str) -> Path:
        directory = self.root / path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").write_text("")
        for name, text in files.items():
            (directory / name.replace("_", ".", 1)).write_text(text)
        return directory

    def test_cgroup_v1_memory_oom_control(self) -> None:
        """cgroup v1: the memory hierarchy's memory.oom_control, and its oom_kill line."""
        self.cgroup("memory/box/gw", memory_oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
        found = count_file(V1, self.root)
        self.assertEqual(found, self.root / "memory/box/gw/memory.oom_control")
        assert found is not None
        self.assertEqual(read_count(found), 4)

    def test_cgroup_v2_memory_events_of_the_nearest_cgroup_that_has_them(self) -> None:
        """cgroup v2: its memory.events, or its parent's when its memory controller is off
        (the cgroup its memory is charged to); the root cgroup has none: nothing to tell."""
        self.cgroup("", cgroup_controllers="memory")
        self.cgroup("system.slice", memory_events=EVENTS.format(2))
        self.cgroup("system.slice/gateway.service")
        self.assertEqual(count_file(V2, self.root), self.root / "system.slice/memory.events")
        self.cgroup("system.slice/gateway.service", memory_events=EVENTS.format(7))
        counts = OomKillCounts(V2, self.root)
        self.assertEqual(counts.count(None), 7)
        self.assertIsNone(count_file(parse_cgroups("0::/\n"), self.root))

    def test_an_apps_own_cgroup_v2(self) -> None:
        """A program that joins its app's cgroup (per-app accounting) is counted there."""
        self.cgroup("system.slice/gateway.service", memory_events=EVENTS.format(0))
        app = self.cgroup("system.slice/gateway.service/gateway-apps/sensor", memory_events=EVENTS.format(1))
        counts = OomKillCounts(V2, self.root)
        self.assertEqual(counts.count(CgroupJoin(str(app / "cgroup.procs"))), 1)
        self.assertEqual(counts.count(CgroupJoin("")), 0)

    def test_nothing_to_read(self) -> None:
        """No memory controller, a kernel without the count (before 4.13), a file that is gone:
        None, never a guess."""
        self.assertIsNone(count_file(parse_cgroups("4:memory:/gone\n"), self.root))
        self.assertIsNone(OomKillCounts(parse_cgroups("1:cpu:/\n"), self.root).count(None))
        old = self.cgroup("memory/old", memory_oom_control="oom_kill_disable 0\nunder_oom 0\n")
        self.assertIsNone(read_count(old / "memory.oom_control"))
        self.assertIsNone(read_count(old / "missing"))


class SupervisorTests(SynchronousTestCase):
    """What the supervisor says of a program the OOM killer took (its cgroup's count rose)."""

    def make(self, startsecs: float) -> tuple[ProgramProcess, FakeProcessReactor]:
        self.kills = 5
        reactor = FakeProcessReactor()
        spec = ProgramSpec("app", "app", "1", ProgramSettings(command="app", startsecs=startsecs), ("app",),
                           Path("/tmp"), {}, None, None)
        launcher = ProcessLauncher(reactor, reactor.kill_group, oom_kills=lambda join: self.kills)
        process = ProgramProcess(spec, launcher, reactor, AppLogWriter(10**6), 1.0, 8.0)
        process.start()
        return process, reactor

    def ends(self, events: list[dict]) -> list[str]:
        return [formatEvent(e) for e in events if "apps: app " in formatEvent(e) and "spawned" not in formatEvent(e)]

    def test_a_sigkill_while_its_cgroup_counted_an_oom_kill(self) -> None:
        """A RUNNING program ended by SIGKILL while its cgroup's count rose: the warning says the
        OOM killer took it, and it is restarted as any end on its own."""
        events = capture_log_events(self)
        process, reactor = self.make(startsecs=0)
        reactor.advance(100)
        self.kills += 1
        reactor.last.exit(None, signal.SIGKILL)
        self.assertEqual(self.ends(events), [
            "apps: app killed by signal 9 (SIGKILL) after 100.0s, not by the gateway: the kernel's OOM killer"
            " took it (out of memory: its memory cgroup counted an OOM kill meanwhile)"])
        self.assertEqual(process.exitstatus, -9)
        reactor.advance(0)
        self.assertEqual((process.state, process.restarts), (ProgramState.RUNNING, 1))

    def test_a_sigkill_with_no_oom_kill_counted_is_an_end_on_its_own(self) -> None:
        """A SIGKILL from elsewhere (the count did not rise), or another end while it rose, is
        told as before."""
        events = capture_log_events(self)
        process, reactor = self.make(startsecs=0)
        reactor.advance(100)
        reactor.last.exit(None, signal.SIGKILL)
        reactor.advance(0)
        reactor.advance(100)
        self.kills += 1
        reactor.last.exit(None, signal.SIGSEGV)
        self.assertEqual([line.split(", ")[1] for line in self.ends(events)],
                         ["on its own: see why in its log (gatewayctl apps logs app)"] * 2)

    def test_a_failed_start(self) -> None:
        """A start the OOM killer cut short says so in its error."""
        process, reactor = self.make(startsecs=1)
        self.kills += 1
        reactor.last.exit(None, signal.SIGKILL)
        self.assertEqual(process.status().error, "killed by signal 9 (the kernel's OOM killer: out of memory) before 1s")

    def test_a_stop_is_no_oom_kill(self) -> None:
        """A program the gateway stopped with SIGKILL (past stopwaitsecs) is a stop, whatever the count."""
        events = capture_log_events(self)
        process, reactor = self.make(startsecs=0)
        process.stop()
        self.kills += 1
        reactor.last.exit(None, signal.SIGKILL)
        self.assertEqual(self.ends(events), ["apps: app stopped after 0.0s: killed by signal 9 (SIGKILL)"])
